#include "agent/head_connection.h"

#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "agent/update_builder.h"
#include "common/transport.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

constexpr uint32_t kProtocolVersion = v1::PROTOCOL_VERSION_CURRENT;
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

HeadConnection::~HeadConnection() = default;

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
    reader_done_ = false;
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
        // A head of another version says so in this field, then ends the stream.
        context_->TryCancel();
        stream_->Finish();
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
    const grpc::Status status = stream_->Finish();
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
}

void HeadConnection::TaskFinished(v1::TaskResult result) {
  absl::MutexLock l(&mu_);
  results_.push_back(std::move(result));
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
}

void HeadConnection::Heartbeat(v1::Heartbeat beat) {
  if (options_.fill_heartbeat) options_.fill_heartbeat(&beat);
  absl::MutexLock l(&mu_);
  heartbeat_ = std::move(beat);  // only the latest answer matters
}

void HeadConnection::TasksReleased(std::vector<uint64_t> task_ids) {
  absl::MutexLock l(&mu_);
  for (uint64_t id : task_ids) released_.push_back(id);
}

void HeadConnection::TaskIO(std::vector<v1::TaskIOFrame> frames) {
  absl::MutexLock l(&mu_);
  for (auto& f : frames) task_io_.push_back(std::move(f));
}

void HeadConnection::TaskLogs(v1::TaskLogsAnswer answer) {
  absl::MutexLock l(&mu_);
  task_logs_.push_back(std::move(answer));
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
      case v1::HeadToAgent::kPing: {
        {
          absl::MutexLock l(&mu_);
          last_ping_ = absl::Now();
        }
        // Answered by the pool's loop, not here: this thread being alive
        // says nothing about the loop that runs the tasks.
        handler->Ping(msg.ping().seq());
        break;
      }
      case v1::HeadToAgent::kReclaim: {
        std::vector<uint64_t> ids(msg.reclaim().task_ids().begin(), msg.reclaim().task_ids().end());
        spdlog::info("head asks back {} task(s): {}", ids.size(), msg.reclaim().reason());
        handler->ReclaimTasks(std::move(ids));
        break;
      }
      case v1::HeadToAgent::kShutdown: {
        spdlog::info("head asks this agent to shut down: {}", msg.shutdown().reason());
        absl::MutexLock l(&mu_);
        shutdown_received_ = true;
        shutdown_reason_ = msg.shutdown().reason();
        break;
      }
      case v1::HeadToAgent::kTaskIo: {
        std::vector<v1::TaskIOFrame> frames;
        for (auto& f : *msg.mutable_task_io()->mutable_frames()) frames.emplace_back().Swap(&f);
        handler->TaskIO(std::move(frames));
        break;
      }
      case v1::HeadToAgent::kTaskLogs:
        handler->TaskLogs(std::move(*msg.mutable_task_logs()));
        break;
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
  const absl::Duration ping_timeout =
      registered_.heartbeat_timeout_ms() > 0
          ? absl::Milliseconds(registered_.heartbeat_timeout_ms())
          : options_.default_heartbeat_timeout;
  {
    absl::MutexLock l(&mu_);
    last_ping_ = absl::Now();  // the head pings right after Registered
  }
  std::thread reader([this, handler] { ReaderLoop(handler); });
  bool stream_broken = false;
  std::string head_silent;  // set when the head stopped pinging
  uint64_t updates = 0;

  auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || reader_done_ || shutdown_received_ || !started_.empty() || !results_.empty() ||
           !released_.empty() || heartbeat_.has_value() || !task_io_.empty() ||
           !task_logs_.empty();
  };
  absl::Time last_update = absl::InfinitePast();
  // When what is queued should leave (update_hold.h); re-evaluated on every
  // event the pool reports, since each may change it.
  auto send_at = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    PendingUpdate pending;
    pending.urgent = stop_ || reader_done_ || shutdown_received_ || heartbeat_.has_value() ||
                     !task_io_.empty() || !task_logs_.empty();
    pending.started = started_.size();
    pending.results = results_.size();
    pending.released = released_.size();
    pending.queued_tasks = handler->QueuedTasks();
    pending.last_update = last_update;
    pending.first_started = first_started_;
    return SendAt(pending, options_.hold);
  };
  auto send_now = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return send_at() <= absl::Now(); };
  while (true) {
    v1::AgentMessage beat;
    v1::AgentMessage msg;
    {
      absl::MutexLock l(&mu_);
      // Wake at least every quarter timeout to look at the head's pings.
      mu_.AwaitWithTimeout(absl::Condition(&has_work), ping_timeout / 4);
      // Held at most until send_at() (a start's linger, the results'
      // window), both far below the ping timeout.
      for (absl::Time until = send_at(); absl::Now() < until; until = send_at()) {
        if (mu_.AwaitWithDeadline(absl::Condition(&send_now), until)) break;
      }
      if (stop_ || reader_done_ || shutdown_received_) break;
      const absl::Duration silent = absl::Now() - last_ping_;
      if (silent >= ping_timeout) {
        // Hung head, cut link, or this agent was stopped (SIGSTOP) for that
        // long: the head has declared it lost by now. Nothing it still holds
        // may be delivered.
        head_silent = absl::StrFormat("no ping from the head for %.1f s (heartbeat timeout %.1f s)",
                                      absl::ToDoubleSeconds(silent),
                                      absl::ToDoubleSeconds(ping_timeout));
        break;
      }
      if (heartbeat_) {
        *beat.mutable_heartbeat() = std::move(*heartbeat_);
        heartbeat_.reset();
      }
      // Everything queued since the last write goes out as one message.
      v1::AgentUpdate update;
      if (TakeUpdate(&started_, &results_, options_.max_update_bytes, &update) ||
          !released_.empty() || !task_io_.empty() || !task_logs_.empty()) {
        for (uint64_t id : released_) update.add_released(id);
        released_.clear();
        // TaskIO frames are small (a window of 256 KiB per job at most).
        for (auto& f : task_io_) update.add_task_io()->Swap(&f);
        task_io_.clear();
        for (auto& a : task_logs_) update.add_task_logs()->Swap(&a);
        task_logs_.clear();
        *msg.mutable_update() = std::move(update);
      }
    }
    if (beat.has_heartbeat() && !stream_->Write(beat)) {
      stream_broken = true;
      break;
    }
    if (!msg.has_update()) continue;
    ++updates;
    last_update = absl::Now();
    spdlog::trace("update {}: {} started, {} results, {} released", updates,
                  msg.update().started_size(), msg.update().results_size(),
                  msg.update().released_size());
    if (!stream_->Write(msg)) {
      stream_broken = true;  // the reader sees the end and the status says why
      break;
    }
  }

  if (!head_silent.empty()) {
    spdlog::error("giving up on dragond at {}: {}", options_.head_address, head_silent);
    context_->TryCancel();
    reader.join();
    stream_->Finish();
    absl::MutexLock l(&mu_);
    live_context_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("lost dragond at ", options_.head_address, ": ", head_silent));
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
