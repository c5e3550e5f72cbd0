// The one place dragond learns it must stop: SIGINT/SIGTERM/SIGHUP, a
// Shutdown RPC, or (with --exit-with-parent) the death of the process that
// started it. The main thread waits on it, then tears down in order.
#ifndef DRAGON_DAEMON_SHUTDOWN_SIGNAL_H_
#define DRAGON_DAEMON_SHUTDOWN_SIGNAL_H_

#include <condition_variable>
#include <mutex>
#include <string>

namespace dragon::daemon {

class ShutdownSignal {
 public:
  // Must run before any other thread exists: it blocks the signals in this
  // thread so that every later thread inherits the mask and only the
  // watcher thread receives them.
  void WatchSignals();
  // Starts watching the current parent process.
  void WatchParent();

  // The first reason wins; later requests are ignored.
  void Request(const std::string& why);
  // Blocks until Request() and returns its reason.
  std::string Wait();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool requested_ = false;
  std::string why_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_SHUTDOWN_SIGNAL_H_
