// The agent's one stream to dragond (AgentService.Connect, proto/agent.proto):
// registration, then one thread (the caller of Run) that waits in the
// stream's completion queue and both hands what the head sends
// (TaskBatch/CancelTasks/ReclaimTasks, Pings) to the pool and writes
// everything the pool reports, batched into one AgentUpdate per write (never
// one message per task), plus the pool's answers to pings (heartbeats). It
// also watches the head's pings: none for the heartbeat timeout and the head
// is given up on.
//
// Why one thread on gRPC's async API rather than a reader and a writer on
// the sync one: each short task crossed both (a read, then the pool's
// result handed to the writer), two threads waking per task on the node's
// busiest cores, and the two threads' sync calls shared one completion
// queue. Now the pool's thread queues an event and wakes the loop (an alarm
// due at once) only when it sleeps with no write in flight and what is
// queued should leave before it would wake anyway: a result held back in a
// flood (update_hold.h) wakes no one.
//
// The loop also watches the head's pings while a write is stuck (a hung head
// stops reading): the sync writer could not.
#ifndef DRAGON_AGENT_HEAD_CONNECTION_H_
#define DRAGON_AGENT_HEAD_CONNECTION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/interfaces.h"
#include "agent/update_hold.h"
#include "proto/agent.grpc.pb.h"

namespace dragon::agent {

struct HeadConnectionOptions {
  std::string head_address;  // HOST:PORT
  std::string token;         // the run's token (empty: none sent)
  std::string tls_ca;        // CA certificate to verify the head with ("" = plaintext)
  v1::Register registration;
  // How long Connect() keeps retrying an unreachable head.
  absl::Duration connect_timeout = absl::Seconds(10);
  // Heartbeat timeout when the head does not say (Registered.heartbeat_timeout_ms = 0).
  absl::Duration default_heartbeat_timeout = absl::Seconds(4);
  // A single AgentUpdate stops growing past this (it always holds at least
  // one item), so a burst of large results stays below kMaxGrpcMessageBytes.
  size_t max_update_bytes = 64u << 20;
  // How long updates are held so that one message carries more (results
  // while the pool has work queued; a start waiting for its result).
  UpdateHoldOptions hold;
  // Adds what the pool does not know to each heartbeat before it is queued
  // (the host's load, the shared-memory pool's use); must not block. Called
  // on the pool's thread.
  std::function<void(v1::Heartbeat*)> fill_heartbeat;
};

class HeadConnection : public TaskEventSink {
 public:
  explicit HeadConnection(HeadConnectionOptions options);
  ~HeadConnection() override;

  // Opens the stream, sends Register and waits for Registered, retrying an
  // unreachable head for up to `timeout` (connect_timeout when zero).
  // `previous_incarnation` is 0 for this process's first registration, else
  // the incarnation it had before it lost the head. Anything queued from an
  // earlier stream is dropped. Errors: Unavailable "cannot reach dragond at
  // ADDR: ...", Unauthenticated (wrong or no token), AlreadyExists (a newer
  // agent serves this node: this one is stale), FailedPrecondition (another
  // protocol version, or any other refusal).
  absl::Status Connect(uint64_t previous_incarnation = 0,
                       absl::Duration timeout = absl::ZeroDuration());

  // Serves the stream until it ends: the head closed it or said
  // AgentShutdown (OK), Stop() was called (OK), or the connection broke or
  // the head stopped pinging (Unavailable, naming the head and why). Tasks
  // go to `handler`.
  absl::Status Run(TaskHandler* handler);

  // Ends Connect()/Run() from any thread (e.g. on SIGTERM).
  void Stop(const std::string& why);

  const v1::Registered& registered() const { return registered_; }

  // TaskEventSink: queued for Run's loop to write; thread-safe.
  void TaskStarted(v1::TaskStarted started) override;
  void TaskFinished(v1::TaskResult result) override;
  void TaskEvents(std::vector<v1::TaskStarted> started,
                  std::vector<v1::TaskResult> results) override;
  void Heartbeat(v1::Heartbeat beat) override;
  void TasksReleased(std::vector<uint64_t> task_ids) override;
  void TaskIO(std::vector<v1::TaskIOFrame> frames) override;
  void TaskLogs(v1::TaskLogsAnswer answer) override;

 private:
  using Stream = grpc::ClientAsyncReaderWriter<v1::AgentMessage, v1::HeadToAgent>;
  // What a completion in cq_ was for; at most one of each is in flight.
  enum class Op : uintptr_t { kStart = 1, kRead, kWrite, kWritesDone, kFinish, kWake };
  static void* Tag(Op op) { return reinterpret_cast<void*>(static_cast<uintptr_t>(op)); }

  // After we close our side, how long the head gets to end the stream before
  // we cancel it ourselves (the agent must exit promptly, never hang).
  static constexpr absl::Duration kCloseGrace = absl::Seconds(2);
  // A gRPC status's message, or its code when it has none.
  static std::string GrpcError(const grpc::Status& status);

  absl::Status MakeChannel();

  // The current call's operations (head_connection_call.cc); only the thread
  // in Connect or Run uses them.
  void StartCall();
  void StartRead();
  void StartWrite(const v1::AgentMessage& message);
  // Takes one completion due by `deadline` and records it; false if none came.
  bool Pump(absl::Time deadline);
  // Pumps until `*pending` is false (true) or `deadline` passes (false).
  bool Await(const bool* pending, absl::Time deadline);
  bool InFlight();
  // Waits for every operation in flight, cancelling the call if they are not
  // all back within `grace`; then asks for the call's status.
  grpc::Status FinishCall(absl::Duration grace);

  void HandleMessage(v1::HeadToAgent* message, TaskHandler* handler);
  // When what is queued should leave (update_hold.h).
  absl::Time SendAtLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes Run's loop if it sleeps past the time what is queued should leave.
  void WakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  HeadConnectionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AgentService::Stub> stub_;
  // Declared before the call's objects, destroyed after them: the
  // destructor shuts it down and drains it first.
  grpc::CompletionQueue cq_;
  grpc::Alarm wake_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<Stream> stream_;
  v1::Registered registered_;

  // The call's state, owned by the thread in Connect or Run.
  bool start_pending_ = false;
  bool start_ok_ = false;
  bool read_pending_ = false;
  bool read_ok_ = false;        // the last read brought a message (read_message_)
  bool read_unhandled_ = false;  // ... which Run has not handled yet
  bool write_pending_ = false;
  bool write_failed_ = false;
  bool writes_done_pending_ = false;
  bool finish_pending_ = false;
  v1::HeadToAgent read_message_;
  grpc::Status finish_status_;

  absl::Mutex mu_;
  std::vector<v1::TaskStarted> started_ ABSL_GUARDED_BY(mu_);
  absl::Time first_started_ ABSL_GUARDED_BY(mu_);  // when started_ last became non-empty
  std::vector<v1::TaskResult> results_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> released_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::TaskIOFrame> task_io_ ABSL_GUARDED_BY(mu_);      // sent at once
  std::vector<v1::TaskLogsAnswer> task_logs_ ABSL_GUARDED_BY(mu_);
  std::optional<v1::Heartbeat> heartbeat_ ABSL_GUARDED_BY(mu_);  // to send
  absl::Time last_ping_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::string stop_reason_ ABSL_GUARDED_BY(mu_);
  bool shutdown_received_ ABSL_GUARDED_BY(mu_) = false;
  std::string shutdown_reason_ ABSL_GUARDED_BY(mu_);
  // Run's loop is about to wait with no write in flight, until
  // loop_wakes_at_: what is queued now wakes it (wake_, due at once) if it
  // should leave before then. Evaluated by the thread that queues, as an
  // absl::Condition would be: a result held back in a flood wakes no one.
  // Cleared when the loop wakes.
  bool wake_on_event_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time loop_wakes_at_ ABSL_GUARDED_BY(mu_);
  TaskHandler* handler_ ABSL_GUARDED_BY(mu_) = nullptr;  // Run's (its QueuedTasks)
  absl::Time last_update_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();  // when the last left
  bool wake_armed_ ABSL_GUARDED_BY(mu_) = false;  // wake_'s completion is still to come
  // The context of the call in progress, for Stop() to cancel.
  grpc::ClientContext* live_context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_HEAD_CONNECTION_H_
