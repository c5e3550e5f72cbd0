#include "daemon/shutdown_signal.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <thread>

#include "absl/strings/str_cat.h"

namespace dragon::daemon {

void ShutdownSignal::WatchSignals() {
  signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // Lives as long as the process; nothing to join.
  std::thread([this, set] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) == 0) Request(absl::StrCat("received ", strsignal(sig)));
    }
  }).detach();
}

void ShutdownSignal::WatchParent() {
  const pid_t parent = getppid();
  std::thread([this, parent] {
    // Polling getppid() is immune to the races of PR_SET_PDEATHSIG (which
    // fires on the death of the forking *thread*, not process).
    while (getppid() == parent) usleep(200 * 1000);
    Request(absl::StrCat("parent process ", parent, " exited"));
  }).detach();
}

void ShutdownSignal::Request(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (requested_) return;
    requested_ = true;
    why_ = why;
  }
  cv_.notify_all();
}

std::string ShutdownSignal::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return requested_; });
  return why_;
}

}  // namespace dragon::daemon
