#include "agent/head_connection.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/transport.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

constexpr uint32_t kProtocolVersion = v1::PROTOCOL_VERSION_CURRENT;
constexpr absl::Duration kRetryPause = absl::Milliseconds(200);

}  // namespace

std::string HeadConnection::GrpcError(const grpc::Status& s) {
  std::string text = s.error_message();
  if (text.empty()) text = absl::StrCat("gRPC status ", s.error_code());
  return text;
}

HeadConnection::HeadConnection(HeadConnectionOptions options) : options_(std::move(options)) {}

absl::Status HeadConnection::MakeChannel() {
  if (channel_ != nullptr) return absl::OkStatus();
  common::ClientTransport transport;
  transport.token = options_.token;
  transport.tls_ca = options_.tls_ca;
  // The head is often still starting when its agents are launched: retry
  // the TCP connect every few hundred ms instead of gRPC's default backoff.
  transport.fast_reconnect = true;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      common::MakeChannel(options_.head_address, transport);
  if (!channel.ok()) return channel.status();
  channel_ = *std::move(channel);
  stub_ = v1::AgentService::NewStub(channel_);
  return absl::OkStatus();
}

HeadConnection::~HeadConnection() {
  // Run and Connect leave no operation in flight; whatever the queue still
  // holds (nothing, normally) must be taken before it goes.
  cq_.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq_.Next(&tag, &ok)) {
  }
}

void HeadConnection::Stop(const std::string& why) {
  absl::MutexLock l(&mu_);
  if (stop_) return;
  stop_ = true;
  stop_reason_ = why;
  if (live_context_ != nullptr) live_context_->TryCancel();
}

absl::Status HeadConnection::Connect(uint64_t previous_incarnation, absl::Duration timeout) {
  const std::string& addr = options_.head_address;
  if (absl::Status s = MakeChannel(); !s.ok()) return s;
  const absl::Time deadline =
      absl::Now() + (timeout > absl::ZeroDuration() ? timeout : options_.connect_timeout);
  options_.registration.set_previous_incarnation(previous_incarnation);
  {
    // Whatever an earlier stream left queued belongs to a fenced incarnation.
    absl::MutexLock l(&mu_);
    started_.clear();
    results_.clear();
    released_.clear();
    task_io_.clear();
    task_logs_.clear();
    heartbeat_.reset();
    shutdown_received_ = false;
  }
  std::string last_error = "no attempt made";
  for (int attempt = 1;; ++attempt) {
    context_ = std::make_unique<grpc::ClientContext>();
    {
      absl::MutexLock l(&mu_);
      if (stop_) return absl::CancelledError(absl::StrCat("stopped: ", stop_reason_));
      live_context_ = context_.get();
    }
    StartCall();
    v1::AgentMessage hello;
    *hello.mutable_register_() = options_.registration;
    hello.mutable_register_()->set_protocol_version(kProtocolVersion);

    // A head that accepts the connection but never answers must not hang
    // the agent: the call is cancelled if Registered has not come by the
    // deadline.
    const absl::Time until = std::max(deadline, absl::Now() + absl::Seconds(1));
    bool ok = Await(&start_pending_, until) && start_ok_;
    if (ok) {
      StartWrite(hello);
      ok = Await(&write_pending_, until) && !write_failed_;
    }
    if (ok) {
      StartRead();
      ok = Await(&read_pending_, until) && read_ok_;
    }
    // Out of time with an operation in flight: cancel. A call whose
    // operations all came back failed is over, and Finish gives the head's
    // reason (a refused token, say), which a cancel would hide.
    if (!ok && InFlight()) context_->TryCancel();
    const v1::HeadToAgent& reply = read_message_;
    read_unhandled_ = false;

    if (ok) {
      if (!reply.has_registered()) {
        context_->TryCancel();
        FinishCall(kCloseGrace);
        return absl::FailedPreconditionError(
            absl::StrCat("dragond at ", addr, " answered Register with something other than "
                         "Registered; is it a dragond of the same version?"));
      }
      registered_ = reply.registered();
      if (registered_.protocol_version() != kProtocolVersion) {
        // A head of another version says so in this field, then ends the stream.
        context_->TryCancel();
        FinishCall(kCloseGrace);
        return absl::FailedPreconditionError(
            absl::StrCat("dragond at ", addr, " speaks protocol version ",
                         registered_.protocol_version(), ", this agent speaks ", kProtocolVersion));
      }
      spdlog::info("registered with dragond at {} as incarnation {} (run {}, pinged every {} ms, "
                   "timeout {} ms, payload limit {} bytes) after {} attempt(s)",
                   addr, registered_.incarnation(), registered_.run_id(),
                   registered_.heartbeat_interval_ms(), registered_.heartbeat_timeout_ms(),
                   registered_.max_payload_bytes(), attempt);
      return absl::OkStatus();
    }
    const grpc::Status status = FinishCall(kCloseGrace);
    {
      absl::MutexLock l(&mu_);
      live_context_ = nullptr;
      if (stop_) return absl::CancelledError(absl::StrCat("stopped: ", stop_reason_));
    }
    // The head is there and said no: retrying would only repeat the answer.
    switch (status.error_code()) {
      case grpc::StatusCode::UNAVAILABLE:
      case grpc::StatusCode::CANCELLED:
      case grpc::StatusCode::DEADLINE_EXCEEDED:
        break;
      case grpc::StatusCode::UNAUTHENTICATED:
        return absl::UnauthenticatedError(absl::StrCat(
            "dragond at ", addr, " refused this agent: ", GrpcError(status), " (this agent ",
            options_.token.empty() ? "had no token: none in $DRAGON_TOKEN or --token-file"
                                   : "sent the token it was given",
            ")"));
      case grpc::StatusCode::ALREADY_EXISTS:
        return absl::AlreadyExistsError(
            absl::StrCat("dragond at ", addr, " refused this agent: ", GrpcError(status)));
      default:
        return absl::FailedPreconditionError(
            absl::StrCat("dragond at ", addr, " refused this agent: ", GrpcError(status)));
    }
    last_error = status.error_code() == grpc::StatusCode::CANCELLED
                     ? "no answer to Register"
                     : GrpcError(status);
    if (absl::Now() + kRetryPause >= deadline) break;
    spdlog::debug("connect attempt {} to {} failed: {}; retrying", attempt, addr, last_error);
    absl::SleepFor(kRetryPause);
  }
  return absl::UnavailableError(absl::StrCat("cannot reach dragond at ", addr, ": ", last_error));
}

void HeadConnection::TaskStarted(v1::TaskStarted started) {
  absl::MutexLock l(&mu_);
  if (started_.empty()) first_started_ = absl::Now();
  started_.push_back(std::move(started));
  WakeLocked();
}

void HeadConnection::TaskFinished(v1::TaskResult result) {
  absl::MutexLock l(&mu_);
  results_.push_back(std::move(result));
  WakeLocked();
}

void HeadConnection::TaskEvents(std::vector<v1::TaskStarted> started,
                                std::vector<v1::TaskResult> results) {
  absl::MutexLock l(&mu_);
  if (started_.empty() && !started.empty()) first_started_ = absl::Now();
  if (started_.empty()) {
    started_.swap(started);
  } else {
    for (auto& s : started) started_.push_back(std::move(s));
  }
  if (results_.empty()) {
    results_.swap(results);
  } else {
    for (auto& r : results) results_.push_back(std::move(r));
  }
  WakeLocked();
}

void HeadConnection::Heartbeat(v1::Heartbeat beat) {
  if (options_.fill_heartbeat) options_.fill_heartbeat(&beat);
  absl::MutexLock l(&mu_);
  heartbeat_ = std::move(beat);  // only the latest answer matters
  WakeLocked();
}

void HeadConnection::TasksReleased(std::vector<uint64_t> task_ids) {
  absl::MutexLock l(&mu_);
  for (uint64_t id : task_ids) released_.push_back(id);
  WakeLocked();
}

void HeadConnection::TaskIO(std::vector<v1::TaskIOFrame> frames) {
  absl::MutexLock l(&mu_);
  for (auto& f : frames) task_io_.push_back(std::move(f));
  WakeLocked();
}

void HeadConnection::TaskLogs(v1::TaskLogsAnswer answer) {
  absl::MutexLock l(&mu_);
  task_logs_.push_back(std::move(answer));
  WakeLocked();
}

}  // namespace dragon::agent
