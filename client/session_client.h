// A reusable C++ client of HeadService.Session (proto/head.proto), the hot
// path, for high-rate callers (bench/native_bench, load generators).
//
//   auto session = SessionClient::Connect(options, callbacks);   // Hello/Welcome
//   session->Submit(task);          // queued; never blocks on the network
//   ...results arrive on the receiver thread through callbacks.on_results...
//   session->Close();               // ends the stream once everything is sent
//
// One sender thread drains everything queued since its last write into one
// SubmitBatch (at most max_batch_tasks tasks / max_batch_bytes, but never
// waits for a batch to fill: a lone task leaves at once). A small task
// submitted with nothing in flight is written by Submit itself, which spares
// a sequential caller the sender's wake-up on every round trip. One receiver thread
// hands each ResultBatch and Accepted message to the callbacks. Every failure
// (head unreachable, refused Hello, broken stream) is an absl::Status naming
// the head's address and the cause.
#ifndef DRAGON_CLIENT_SESSION_CLIENT_H_
#define DRAGON_CLIENT_SESSION_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/head.grpc.pb.h"

namespace dragon::client {

// The protocol version this client speaks (proto/common.proto).
inline constexpr uint32_t kSessionProtocolVersion = dragon::v1::PROTOCOL_VERSION_CURRENT;

struct SessionOptions {
  std::string address;  // HOST:PORT of dragond
  std::string token;    // the run's token (common::LocateHead finds it)
  std::string tls_ca;   // CA certificate to verify the head with; empty: plaintext
  std::string client_name = "dragon session_client";
  // Tasks of this session run here; empty = this process's working directory.
  std::string cwd;
  // Connecting and the Hello/Welcome exchange must finish within this.
  absl::Duration connect_timeout = absl::Seconds(10);
  // One SubmitBatch holds at most this many tasks / about this many bytes
  // (a single task larger than max_batch_bytes still goes, alone).
  size_t max_batch_tasks = 1000;
  size_t max_batch_bytes = 4u << 20;
  // The protocol version spoken in the Hello; another than this build's only
  // to test how a head answers a client of another version.
  uint32_t protocol_version = kSessionProtocolVersion;
  // Infrastructure retries asked for in the Hello; unset: the head's default.
  std::optional<uint32_t> infra_retries;
  // With at least linger_in_flight tasks outstanding (submitted, no result
  // yet), the sender waits `linger` before taking what is queued, so that a
  // burst leaves in one message instead of one per wake-up of the sender,
  // the head and the agent; the workers have work meanwhile. Zero: never.
  absl::Duration linger = absl::ZeroDuration();
  size_t linger_in_flight = 64;
  // With fewer in flight but at least one (the workers are busy, a stream of
  // submissions is under way), the sender waits this long before taking the
  // queue: without it a submitter that queues one task at a time (Parsl's
  // DataFlowKernel) has each task sent alone, and the head and the agent are
  // woken once per task. A lone task with nothing in flight goes at once.
  absl::Duration gather = absl::Microseconds(1000);
  // Asks the head (Hello.accepted_with_results) to send a Python task's id
  // with its next message to this session instead of an Accepted of its own:
  // a task whose result comes first is then never in an Accepted (its result
  // carries its id), and one of a longer task comes within the head's tick
  // (100 ms). Half the messages in a flood of short tasks; a caller that
  // needs each id as soon as the head gives it sets false.
  bool accepted_with_results = true;
};

// Payloads on the errors of Connect and of a broken stream, so that callers
// (the Python binding) build their own errors from fields, never from text:
// - kDetailPayload: what went wrong, without the head's address;
// - kGrpcStatusPayload ("1"): the detail is the gRPC status text the head or
//   the transport ended the stream with (the code is the status's code);
// - kHeadProtocolPayload: the head's protocol version when it speaks another.
inline constexpr char kDetailPayload[] = "type.dragon/detail";
inline constexpr char kGrpcStatusPayload[] = "type.dragon/grpc_status";
inline constexpr char kHeadProtocolPayload[] = "type.dragon/head_protocol_version";

struct SessionCallbacks {
  // Called on the receiver thread, one call per ResultBatch message; the
  // callee may move data out of the batch. Must not call Close().
  std::function<void(dragon::v1::ResultBatch* batch)> on_results;
  // Called on the receiver thread for each Accepted message, and for the ids
  // a ResultBatch carries (just before its on_results) (optional). With
  // SessionOptions::accepted_with_results, not every task's id comes here.
  std::function<void(const dragon::v1::Accepted& accepted)> on_accepted;
  // Called once, on the receiver thread, when the stream has ended: OK after
  // Close(), otherwise the error (optional).
  std::function<void(const absl::Status& status)> on_end;
};

class SessionClient {
 public:
  // Connects (waiting up to connect_timeout), sends Hello and waits for
  // Welcome. Errors: "cannot reach dragond at ADDR: ...", the head's own
  // refusal (e.g. a protocol version mismatch), or a Welcome with another
  // protocol version.
  static absl::StatusOr<std::unique_ptr<SessionClient>> Connect(SessionOptions options,
                                                                SessionCallbacks callbacks);
  ~SessionClient();  // Close() with a short grace, then cancels

  SessionClient(const SessionClient&) = delete;
  SessionClient& operator=(const SessionClient&) = delete;

  const dragon::v1::Welcome& welcome() const { return welcome_; }
  const std::string& address() const { return options_.address; }

  // Queues tasks for the sender; returns at once. (Submit writes a task of at
  // most kInlineSendMaxBytes itself when nothing is in flight or queued: the
  // stream's buffers are then empty, so the write does not wait on the head.)
  // client_ref is the caller's
  // and must be unique within the session (results carry it back). Fails
  // once the session is closed or broken (the error says why), and for a
  // task whose payload exceeds the head's limit (Welcome.max_payload_bytes):
  // Submit refuses that task alone; SubmitMany queues none of the batch,
  // naming the first such task.
  absl::Status Submit(dragon::v1::TaskSubmission task);
  absl::Status SubmitMany(std::vector<dragon::v1::TaskSubmission> tasks);

  // Sends what is queued, half-closes the stream and waits up to `timeout`
  // for the head to end it (the head cancels tasks of the session that are
  // still unfinished). Returns OK, or the error the stream ended with.
  // Idempotent.
  absl::Status Close(absl::Duration timeout = absl::Seconds(10));

  // Off: tasks over the head's limit are sent anyway, for the head to refuse
  // (tests of the head's own check). On by default.
  void set_size_check(bool on) { size_check_.store(on); }

  // OK while the stream is healthy, else why it is not.
  absl::Status status() const;

  // Counters (for benchmarks and tests).
  uint64_t batches_sent() const;
  uint64_t tasks_sent() const;
  uint64_t lingers() const;  // sends that waited for a burst to gather

 private:
  using Stream = grpc::ClientReaderWriter<dragon::v1::ClientMessage, dragon::v1::HeadMessage>;

  SessionClient(SessionOptions options, SessionCallbacks callbacks);
  absl::Status Open();
  void SenderLoop();
  void ReceiverLoop();
  void Fail(absl::Status status);
  // Why no task can be queued now (an earlier error, or Close() called); OK if one can. mu_ held.
  absl::Status AcceptingLocked() const;
  // How long the sender should let a burst gather before taking the queue
  // (zero: not at all). Counts lingers. mu_ held.
  absl::Duration GatherLocked();
  // OK, or why the head would refuse the task for its size.
  absl::Status CheckSize(const dragon::v1::TaskSubmission& task) const;
  // Whether Submit may write `task` itself instead of waking the sender: a small task
  // with nothing in flight, nothing queued and nobody writing, i.e. one the sender
  // would send alone at once. Saves the sender's wake-up (tens of microseconds) on
  // each sequential round trip. mu_ held.
  bool MaySendInlineLocked(const dragon::v1::TaskSubmission& task) const;
  // Writes one task on the calling thread (writing_ claimed by the caller).
  void SendInline(dragon::v1::TaskSubmission task);
  // Larger tasks always go through the sender: an inline Write of a large message could
  // wait on the transport's flow control, and Submit never blocks on the network.
  static constexpr size_t kInlineSendMaxBytes = 16 << 10;

  const SessionOptions options_;
  std::atomic<bool> size_check_{true};
  const SessionCallbacks callbacks_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<dragon::v1::HeadService::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<Stream> stream_;
  dragon::v1::Welcome welcome_;

  mutable std::mutex mu_;
  std::condition_variable send_cv_;   // queue not empty, or closing
  std::condition_variable ended_cv_;  // receiver done
  std::condition_variable writing_cv_;  // writing_ went false
  std::vector<dragon::v1::TaskSubmission> queue_;
  bool closing_ = false;       // Close() called: no new submissions
  bool receiver_done_ = false;  // Read() returned false
  bool ended_ = false;          // Finish() done and on_end called
  // A thread is writing to the stream: the sender with what it took, or Submit
  // with a lone task (SendInline). Writes never overlap, and keep the queue's order.
  bool writing_ = false;
  bool write_failed_ = false;   // an inline write failed: the stream is broken
  absl::Status error_;         // first failure
  absl::Status end_status_;    // how the stream ended (valid once receiver_done_)
  uint64_t batches_sent_ = 0;
  uint64_t tasks_sent_ = 0;
  uint64_t lingers_ = 0;
  uint64_t submitted_ = 0;  // tasks queued by Submit/SubmitMany
  uint64_t finished_ = 0;   // results received

  std::thread sender_;
  std::thread receiver_;
  bool joined_ = false;
};

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_SESSION_CLIENT_H_
