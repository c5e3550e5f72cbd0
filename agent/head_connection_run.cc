// HeadConnection::Run: the loop that serves the head's stream once
// registered, on the thread that calls it. It waits in the stream's
// completion queue for whichever comes first: a message from the head, the
// end of a write, the pool's wake (something queued), or the time to send
// what the hold kept back (update_hold.h) or to look at the head's pings.
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "agent/head_connection.h"
#include "agent/update_builder.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {

void HeadConnection::HandleMessage(v1::HeadToAgent* message, TaskHandler* handler) {
  // Every handler call only queues for the pool's thread: this loop, which
  // also writes, never waits on the pool.
  switch (message->body_case()) {
    case v1::HeadToAgent::kTasks: {
      auto* tasks = message->mutable_tasks()->mutable_tasks();
      std::vector<v1::TaskAssignment> batch;
      batch.reserve(tasks->size());
      // Swap, not copy: payloads can be large.
      for (auto& t : *tasks) batch.emplace_back().Swap(&t);
      spdlog::debug("received {} tasks", batch.size());
      handler->SubmitTasks(std::move(batch));
      break;
    }
    case v1::HeadToAgent::kCancel: {
      const auto& c = message->cancel();
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
      handler->Ping(message->ping().seq());
      break;
    }
    case v1::HeadToAgent::kReclaim: {
      std::vector<uint64_t> ids(message->reclaim().task_ids().begin(), message->reclaim().task_ids().end());
      spdlog::info("head asks back {} task(s): {}", ids.size(), message->reclaim().reason());
      handler->ReclaimTasks(std::move(ids));
      break;
    }
    case v1::HeadToAgent::kShutdown: {
      spdlog::info("head asks this agent to shut down: {}", message->shutdown().reason());
      absl::MutexLock l(&mu_);
      shutdown_received_ = true;
      shutdown_reason_ = message->shutdown().reason();
      break;
    }
    case v1::HeadToAgent::kTaskIo: {
      std::vector<v1::TaskIOFrame> frames;
      for (auto& f : *message->mutable_task_io()->mutable_frames()) frames.emplace_back().Swap(&f);
      handler->TaskIO(std::move(frames));
      break;
    }
    case v1::HeadToAgent::kTaskLogs:
      handler->TaskLogs(std::move(*message->mutable_task_logs()));
      break;
    case v1::HeadToAgent::kRegistered:
      spdlog::warn("head sent Registered again; ignored");
      break;
    default:
      spdlog::warn("unknown message from the head (body case {}); ignored",
                   static_cast<int>(message->body_case()));
      break;
  }
}

absl::Status HeadConnection::Run(TaskHandler* handler) {
  const absl::Duration ping_timeout =
      registered_.heartbeat_timeout_ms() > 0
          ? absl::Milliseconds(registered_.heartbeat_timeout_ms())
          : options_.default_heartbeat_timeout;
  {
    absl::MutexLock l(&mu_);
    last_ping_ = absl::Now();  // the head pings right after Registered
    handler_ = handler;
    last_update_ = absl::InfinitePast();
  }
  StartRead();
  bool reader_done = false;
  std::string head_silent;  // set when the head stopped pinging
  uint64_t updates = 0;
  v1::AgentMessage beat;     // a heartbeat waiting for the write in flight
  v1::AgentMessage message;  // an update waiting for it
  bool beat_ready = false;
  bool update_ready = false;

  auto has_payload = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !started_.empty() || !results_.empty() || !released_.empty() ||
           heartbeat_.has_value() || !task_io_.empty() || !task_logs_.empty();
  };
  while (true) {
    if (read_unhandled_) {
      read_unhandled_ = false;
      HandleMessage(&read_message_, handler);
      StartRead();
    } else if (!read_pending_) {
      reader_done = true;  // the head closed the stream, or it broke: Finish says which
      break;
    }
    if (write_failed_) break;  // the read fails too; the status says why
    absl::Time wake_at;
    {
      absl::MutexLock l(&mu_);
      wake_on_event_ = false;
      if (stop_ || shutdown_received_) break;
      const absl::Time now = absl::Now();
      const absl::Duration silent = now - last_ping_;
      if (silent >= ping_timeout) {
        // Hung head, cut link, or this agent was stopped (SIGSTOP) for that
        // long: the head has declared it lost by now. Nothing it still holds
        // may be delivered.
        head_silent = absl::StrFormat("no ping from the head for %.1f s (heartbeat timeout %.1f s)",
                                      absl::ToDoubleSeconds(silent),
                                      absl::ToDoubleSeconds(ping_timeout));
        break;
      }
      // Look at the head's pings at least every quarter timeout.
      wake_at = now + ping_timeout / 4;
      if (!write_pending_ && !beat_ready && !update_ready && has_payload()) {
        const absl::Time until = SendAtLocked();
        if (until > now) {
          wake_at = std::min(wake_at, until);  // held (both far below the ping timeout)
        } else {
          if (heartbeat_) {
            *beat.mutable_heartbeat() = std::move(*heartbeat_);
            heartbeat_.reset();
            beat_ready = true;
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
            *message.mutable_update() = std::move(update);
            update_ready = true;
            last_update_ = now;
          }
        }
      }
      // With no write in flight, what the pool queues from now on must wake
      // this loop; with one, its completion will.
      wake_on_event_ = !write_pending_ && !beat_ready && !update_ready;
      loop_wakes_at_ = wake_at;
    }
    if (!write_pending_ && beat_ready) {
      StartWrite(beat);
      beat.Clear();
      beat_ready = false;
    } else if (!write_pending_ && update_ready) {
      ++updates;
      spdlog::trace("update {}: {} started, {} results, {} released", updates,
                    message.update().started_size(), message.update().results_size(),
                    message.update().released_size());
      StartWrite(message);
      message.Clear();
      update_ready = false;
    }
    Pump(wake_at);
  }
  {
    absl::MutexLock l(&mu_);
    wake_on_event_ = false;  // nothing wakes a loop that has ended
    handler_ = nullptr;      // nor asks the handler, which goes after Run
  }

  if (!head_silent.empty()) {
    spdlog::error("giving up on dragond at {}: {}", options_.head_address, head_silent);
    context_->TryCancel();
    FinishCall(kCloseGrace);
    absl::MutexLock l(&mu_);
    live_context_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("lost dragond at ", options_.head_address, ": ", head_silent));
  }
  // Our side is closed once the last write is out; then the head gets a
  // grace to end the stream (what it still sends is handed on as before).
  const absl::Time close_by = absl::Now() + kCloseGrace;
  if (Await(&write_pending_, close_by) && !write_failed_ && !reader_done) {
    writes_done_pending_ = true;
    stream_->WritesDone(Tag(Op::kWritesDone));
  }
  while (!reader_done && !write_failed_) {
    if (read_unhandled_) {
      read_unhandled_ = false;
      HandleMessage(&read_message_, handler);
      StartRead();
    } else if (!read_pending_) {
      reader_done = true;
    } else if (!Pump(close_by)) {
      spdlog::warn("head did not close the stream within {} s; cancelling it",
                   absl::ToInt64Seconds(kCloseGrace));
      context_->TryCancel();
      break;
    }
  }
  const grpc::Status status = FinishCall(kCloseGrace);
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
