// One thread that runs the head's streams (agents' and sessions') on gRPC's
// async API: it waits in the server completion queue and handles each
// completed read, write and finish itself.
//
// Why not the callback API, which the streams used before: in gRPC 1.51 a
// callback runs on one of two "nexting" threads that take turns on the
// callback queue. With one task per message (Parsl's default logging) each of
// them woke 3-4 times per task, about 7 thread hand-offs in dragond per short
// task where 2 reads are all that has to wake it. Here the thread that waits
// in the queue is the one that handles what completes, and a write started
// while handling a read is collected by the same thread on its next turn,
// without sleeping in between.
#ifndef DRAGON_DAEMON_COMPLETION_LOOP_H_
#define DRAGON_DAEMON_COMPLETION_LOOP_H_

#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_set>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"

namespace dragon::daemon {

// What the loop's thread runs when an operation completes: a stream keeps one
// per kind of operation and passes its address as the operation's tag.
class CompletionTag {
 public:
  explicit CompletionTag(std::function<void(bool ok)> on_done) : on_done_(std::move(on_done)) {}
  void Complete(bool ok) { on_done_(ok); }

 private:
  std::function<void(bool)> on_done_;
};

// A call the loop serves; the loop ends those still alive when it stops
// (their remaining operations were refused or never came back).
class LoopCall {
 public:
  virtual ~LoopCall() = default;
  // Releases the call: called once, by the call itself when its last
  // operation is back, or by the loop when it stops. Deletes the object.
  virtual void Abandon() = 0;
};

class CompletionLoop {
 public:
  // Adds the loop's queue to `builder`: construct before BuildAndStart().
  explicit CompletionLoop(grpc::ServerBuilder* builder);
  // Stops without a server (Stop() not called): the queue is shut down and drained.
  ~CompletionLoop();

  CompletionLoop(const CompletionLoop&) = delete;
  CompletionLoop& operator=(const CompletionLoop&) = delete;

  // Starts the thread; call once the server is built.
  void Start();

  // Shuts `server` down (calls still running after `grace` are cancelled),
  // then the queue; returns once every operation's tag is back and every
  // call released. Idempotent; `server` may be null (nothing was built).
  void Stop(grpc::Server* server, absl::Duration grace);

  grpc::ServerCompletionQueue* queue() { return queue_.get(); }

  // Starts an operation on the queue with `start` unless the loop is
  // stopping: after the queue's shutdown gRPC must not be handed new
  // operations. Returns false (and does not run `start`) then.
  template <typename Start>
  bool StartOp(Start&& start) {
    std::shared_lock<std::shared_mutex> lock(ops_mu_);
    if (!accepting_) return false;
    start();
    return true;
  }

  void Register(LoopCall* call);
  void Unregister(LoopCall* call);

 private:
  void Run();

  std::unique_ptr<grpc::ServerCompletionQueue> queue_;
  std::thread thread_;
  // Held shared while an operation starts, exclusively to refuse new ones.
  std::shared_mutex ops_mu_;
  bool accepting_ = true;  // guarded by ops_mu_
  std::mutex calls_mu_;
  std::unordered_set<LoopCall*> calls_;  // guarded by calls_mu_
  std::once_flag stopped_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_COMPLETION_LOOP_H_
