// HeadConnection's call to the head as operations on its completion queue:
// starting each, and taking their completions one at a time. Only the thread
// in Connect or Run calls these, so the call's state needs no lock; the
// wake alarm's flag is shared with the pool's thread (mu_).
#include <cstdint>

#include "absl/time/clock.h"
#include "agent/head_connection.h"

namespace dragon::agent {

void HeadConnection::StartCall() {
  start_pending_ = true;
  start_ok_ = false;
  read_pending_ = false;
  read_ok_ = false;
  read_unhandled_ = false;
  write_pending_ = false;
  write_failed_ = false;
  writes_done_pending_ = false;
  finish_pending_ = false;
  stream_ = stub_->AsyncConnect(context_.get(), &cq_, Tag(Op::kStart));
}

void HeadConnection::StartRead() {
  read_message_.Clear();
  read_pending_ = true;
  stream_->Read(&read_message_, Tag(Op::kRead));
}

void HeadConnection::StartWrite(const v1::AgentMessage& message) {
  // gRPC serializes the message here: it need not outlive the call.
  write_pending_ = true;
  stream_->Write(message, Tag(Op::kWrite));
}

bool HeadConnection::Pump(absl::Time deadline) {
  void* tag = nullptr;
  bool ok = false;
  if (cq_.AsyncNext(&tag, &ok, absl::ToChronoTime(deadline)) !=
      grpc::CompletionQueue::GOT_EVENT) {
    return false;
  }
  switch (static_cast<Op>(reinterpret_cast<uintptr_t>(tag))) {
    case Op::kStart:
      start_pending_ = false;
      start_ok_ = ok;
      break;
    case Op::kRead:
      read_pending_ = false;
      read_ok_ = ok;
      read_unhandled_ = ok;
      break;
    case Op::kWrite:
      write_pending_ = false;
      if (!ok) write_failed_ = true;  // the call is over; its status says why
      break;
    case Op::kWritesDone:
      writes_done_pending_ = false;
      break;
    case Op::kFinish:
      finish_pending_ = false;
      break;
    case Op::kWake: {
      absl::MutexLock l(&mu_);
      wake_armed_ = false;
      break;
    }
  }
  return true;
}

bool HeadConnection::Await(const bool* pending, absl::Time deadline) {
  while (*pending) {
    if (!Pump(deadline)) return false;
  }
  return true;
}

bool HeadConnection::InFlight() {
  if (start_pending_ || read_pending_ || write_pending_ || writes_done_pending_ ||
      finish_pending_) {
    return true;
  }
  absl::MutexLock l(&mu_);
  return wake_armed_;
}

grpc::Status HeadConnection::FinishCall(absl::Duration grace) {
  // Finish may not overlap the call's other operations, and every one of
  // them must be back before the call's objects go.
  const absl::Time deadline = absl::Now() + grace;
  bool cancelled = false;
  while (InFlight()) {
    if (!Pump(cancelled ? absl::Now() + absl::Seconds(1) : deadline) && !cancelled) {
      context_->TryCancel();  // a cancelled call's operations all come back at once
      cancelled = true;
    }
  }
  finish_pending_ = true;
  stream_->Finish(&finish_status_, Tag(Op::kFinish));
  while (finish_pending_) Pump(absl::Now() + absl::Seconds(1));
  return finish_status_;
}

absl::Time HeadConnection::SendAtLocked() {
  PendingUpdate pending;
  pending.urgent = heartbeat_.has_value() || !task_io_.empty() || !task_logs_.empty();
  pending.started = started_.size();
  pending.results = results_.size();
  pending.released = released_.size();
  pending.queued_tasks = handler_ != nullptr ? handler_->QueuedTasks() : 0;
  pending.last_update = last_update_;
  pending.first_started = first_started_;
  return SendAt(pending, options_.hold);
}

void HeadConnection::WakeLocked() {
  if (!wake_on_event_ || wake_armed_ || SendAtLocked() >= loop_wakes_at_) return;
  wake_on_event_ = false;
  wake_armed_ = true;
  // Due in the past, not now: gRPC rounds a deadline up to its next
  // millisecond, so "now" would put the wake on its timer list for up to a
  // millisecond; one already past is completed here, at once.
  wake_.Set(&cq_, gpr_inf_past(GPR_CLOCK_MONOTONIC), Tag(Op::kWake));
}

}  // namespace dragon::agent
