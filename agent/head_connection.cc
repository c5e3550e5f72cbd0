#include "agent/head_connection.h"

#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/update_builder.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

constexpr uint32_t kProtocolVersion = 1;
// After we close our side, how long the head gets to end the stream before
// we cancel it ourselves (the agent must exit promptly, never hang).
constexpr absl::Duration kCloseGrace = absl::Seconds(2);
constexpr absl::Duration kRetryPause = absl::Milliseconds(200);

std::string GrpcError(const grpc::Status& s) {
  std::string text = s.error_message();
  if (text.empty()) text = absl::StrCat("gRPC status ", s.error_code());
  return text;
}

}  // namespace

HeadConnection::HeadConnection(HeadConnectionOptions options) : options_(std::move(options)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxGrpcMessageBytes);
  args.SetMaxSendMessageSize(kMaxGrpcMessageBytes);
  // The head is often still starting when its agents are launched: retry
  // the TCP connect every few hundred ms instead of gRPC's default backoff.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // A head whose machine vanished without closing TCP is noticed within
  // ~20 s (dragond permits pings this often) and the agent then exits,
  // killing its workers, instead of waiting for TCP's own timeout.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  channel_ = grpc::CreateCustomChannel(options_.head_address, grpc::InsecureChannelCredentials(),
                                       args);
  stub_ = v1::AgentService::NewStub(channel_);
}

HeadConnection::~HeadConnection() = default;

void HeadConnection::Stop(const std::string& why) {
  absl::MutexLock l(&mu_);
  if (stop_) return;
  stop_ = true;
  stop_reason_ = why;
  if (live_context_ != nullptr) live_context_->TryCancel();
}

absl::Status HeadConnection::Connect() {
  const std::string& addr = options_.head_address;
  const absl::Time deadline = absl::Now() + options_.connect_timeout;
  std::string last_error = "no attempt made";
  for (int attempt = 1;; ++attempt) {
    context_ = std::make_unique<grpc::ClientContext>();
    {
      absl::MutexLock l(&mu_);
      if (stop_) return absl::CancelledError(absl::StrCat("stopped: ", stop_reason_));
      live_context_ = context_.get();
    }
    stream_ = stub_->Connect(context_.get());
    v1::AgentMessage hello;
    *hello.mutable_register_() = options_.registration;
    hello.mutable_register_()->set_protocol_version(kProtocolVersion);

    // A head that accepts the connection but never answers must not hang
    // the agent: cancel the call if Registered has not come by the deadline.
    absl::Mutex wd_mu;
    bool answered = false;
    grpc::ClientContext* ctx = context_.get();
    std::thread watchdog([&] {
      absl::MutexLock l(&wd_mu);
      const absl::Time until = std::max(deadline, absl::Now() + absl::Seconds(1));
      if (!wd_mu.AwaitWithDeadline(absl::Condition(&answered), until)) ctx->TryCancel();
    });
    v1::HeadToAgent reply;
    const bool ok = stream_->Write(hello) && stream_->Read(&reply);
    {
      absl::MutexLock l(&wd_mu);
      answered = true;
    }
    watchdog.join();

    if (ok) {
      if (!reply.has_registered()) {
        context_->TryCancel();
        stream_->Finish();
        return absl::FailedPreconditionError(
            absl::StrCat("dragond at ", addr, " answered Register with something other than "
                         "Registered; is it a dragond of the same version?"));
      }
      registered_ = reply.registered();
      if (registered_.protocol_version() != kProtocolVersion) {
        context_->TryCancel();
        stream_->Finish();
        return absl::FailedPreconditionError(
            absl::StrCat("dragond at ", addr, " speaks protocol version ",
                         registered_.protocol_version(), ", this agent speaks ", kProtocolVersion));
      }
      spdlog::info("registered with dragond at {} (run {}, heartbeat every {} ms) after {} attempt(s)",
                   addr, registered_.run_id(), registered_.heartbeat_interval_ms(), attempt);
      return absl::OkStatus();
    }
    const grpc::Status status = stream_->Finish();
    {
      absl::MutexLock l(&mu_);
      live_context_ = nullptr;
      if (stop_) return absl::CancelledError(absl::StrCat("stopped: ", stop_reason_));
    }
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
        status.error_code() != grpc::StatusCode::CANCELLED &&
        status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      // The head is there and said no (e.g. duplicate node id): retrying
      // would only repeat the answer.
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
  started_.push_back(std::move(started));
}

void HeadConnection::TaskFinished(v1::TaskResult result) {
  absl::MutexLock l(&mu_);
  results_.push_back(std::move(result));
}

void HeadConnection::TaskEvents(std::vector<v1::TaskStarted> started,
                                std::vector<v1::TaskResult> results) {
  absl::MutexLock l(&mu_);
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
}

void HeadConnection::ReaderLoop(TaskHandler* handler) {
  v1::HeadToAgent msg;
  while (stream_->Read(&msg)) {
    switch (msg.body_case()) {
      case v1::HeadToAgent::kTasks: {
        auto* tasks = msg.mutable_tasks()->mutable_tasks();
        std::vector<v1::TaskAssignment> batch;
        batch.reserve(tasks->size());
        // Swap, not copy: payloads can be large.
        for (auto& t : *tasks) batch.emplace_back().Swap(&t);
        spdlog::debug("received {} tasks", batch.size());
        handler->SubmitTasks(std::move(batch));
        break;
      }
      case v1::HeadToAgent::kCancel: {
        const auto& c = msg.cancel();
        std::vector<uint64_t> ids(c.task_ids().begin(), c.task_ids().end());
        spdlog::info("head cancels {} task(s): {}", ids.size(), c.reason());
        handler->CancelTasks(std::move(ids), c.reason());
        break;
      }
      case v1::HeadToAgent::kShutdown: {
        spdlog::info("head asks this agent to shut down: {}", msg.shutdown().reason());
        absl::MutexLock l(&mu_);
        shutdown_received_ = true;
        shutdown_reason_ = msg.shutdown().reason();
        break;
      }
      case v1::HeadToAgent::kRegistered:
        spdlog::warn("head sent Registered again; ignored");
        break;
      default:
        spdlog::warn("unknown message from the head (body case {}); ignored",
                     static_cast<int>(msg.body_case()));
        break;
    }
    msg.Clear();
  }
  absl::MutexLock l(&mu_);
  reader_done_ = true;
}

absl::Status HeadConnection::Run(TaskHandler* handler) {
  std::thread reader([this, handler] { ReaderLoop(handler); });
  const absl::Duration heartbeat =
      registered_.heartbeat_interval_ms() > 0
          ? absl::Milliseconds(registered_.heartbeat_interval_ms())
          : options_.default_heartbeat;
  absl::Time next_heartbeat = absl::Now() + heartbeat;
  bool stream_broken = false;
  uint64_t updates = 0;

  auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || reader_done_ || shutdown_received_ || !started_.empty() || !results_.empty();
  };
  // Holding results back is free only while the pool has work queued for
  // every slot that frees up; re-checked on every event the pool reports.
  auto flush_now = [this, handler]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || reader_done_ || shutdown_received_ || handler->QueuedTasks() == 0 ||
           results_.size() >= options_.coalesce_max_results;
  };
  absl::Time last_update = absl::InfinitePast();
  while (true) {
    v1::AgentMessage msg;
    {
      absl::MutexLock l(&mu_);
      mu_.AwaitWithDeadline(absl::Condition(&has_work), next_heartbeat);
      if (!results_.empty() && options_.coalesce > absl::ZeroDuration()) {
        const absl::Time until = last_update + options_.coalesce;
        if (absl::Now() < until) mu_.AwaitWithDeadline(absl::Condition(&flush_now), until);
      }
      if (stop_ || reader_done_ || shutdown_received_) break;
      // Everything queued since the last write goes out as one message.
      v1::AgentUpdate update;
      if (TakeUpdate(&started_, &results_, options_.max_update_bytes, &update)) {
        *msg.mutable_update() = std::move(update);
      }
    }
    if (!msg.has_update()) {
      if (absl::Now() < next_heartbeat) continue;
      msg.mutable_heartbeat()->set_busy_workers(static_cast<uint32_t>(handler->BusyWorkers()));
      next_heartbeat = absl::Now() + heartbeat;
    } else {
      ++updates;
      last_update = absl::Now();
      spdlog::trace("update {}: {} started, {} results", updates, msg.update().started_size(),
                    msg.update().results_size());
    }
    if (!stream_->Write(msg)) {
      stream_broken = true;  // the reader sees the end and the status says why
      break;
    }
  }

  if (!stream_broken) stream_->WritesDone();
  {
    absl::MutexLock l(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&reader_done_), kCloseGrace)) {
      spdlog::warn("head did not close the stream within {} s; cancelling it",
                   absl::ToInt64Seconds(kCloseGrace));
      context_->TryCancel();
    }
  }
  reader.join();
  const grpc::Status status = stream_->Finish();
  absl::MutexLock l(&mu_);
  live_context_ = nullptr;
  if (stop_) {
    spdlog::info("leaving: {}", stop_reason_);
    return absl::OkStatus();
  }
  if (shutdown_received_) {
    spdlog::info("leaving: head said AgentShutdown ({})", shutdown_reason_);
    return absl::OkStatus();
  }
  if (status.ok()) {
    spdlog::info("leaving: dragond at {} closed the stream", options_.head_address);
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat("lost the connection to dragond at ",
                                             options_.head_address, ": ", GrpcError(status)));
}

}  // namespace dragon::agent
