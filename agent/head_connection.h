// The agent's one stream to dragond (AgentService.Connect, proto/agent.proto):
// registration, a reader thread that hands TaskBatch/CancelTasks/ReclaimTasks
// and Pings to the pool, and a writer that batches everything the pool
// reports into one AgentUpdate per write (never one message per task), plus
// the pool's answers to pings (heartbeats). The writer also watches the
// head's pings: none for the heartbeat timeout and the head is given up on.
#ifndef DRAGON_AGENT_HEAD_CONNECTION_H_
#define DRAGON_AGENT_HEAD_CONNECTION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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

  // TaskEventSink: queued for the writer; thread-safe.
  void TaskStarted(v1::TaskStarted started) override;
  void TaskFinished(v1::TaskResult result) override;
  void TaskEvents(std::vector<v1::TaskStarted> started,
                  std::vector<v1::TaskResult> results) override;
  void Heartbeat(v1::Heartbeat beat) override;
  void TasksReleased(std::vector<uint64_t> task_ids) override;
  void TaskIO(std::vector<v1::TaskIOFrame> frames) override;
  void TaskLogs(v1::TaskLogsAnswer answer) override;

 private:
  using Stream = grpc::ClientReaderWriter<v1::AgentMessage, v1::HeadToAgent>;

  void ReaderLoop(TaskHandler* handler);
  absl::Status MakeChannel();

  HeadConnectionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AgentService::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<Stream> stream_;
  v1::Registered registered_;

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
  bool reader_done_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_received_ ABSL_GUARDED_BY(mu_) = false;
  std::string shutdown_reason_ ABSL_GUARDED_BY(mu_);
  // The context of the call in progress, for Stop() to cancel.
  grpc::ClientContext* live_context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_HEAD_CONNECTION_H_
