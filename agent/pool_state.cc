#include "agent/pool_state.h"

#include <string.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

constexpr int64_t kFirstRestartDelayUs = 100'000;

}  // namespace

PoolState::PoolState(PoolOptions options, WorkerControl* control, TaskEventSink* sink,
                     Clock now_us)
    : options_(std::move(options)),
      control_(control),
      sink_(sink),
      now_us_(std::move(now_us)),
      slots_(std::max(1, options_.slots)),
      cores_(options_.cores) {
  budget_ = std::max(options_.cores, slots());
}

void PoolState::StartAll() {
  for (int i = 0; i < slots(); ++i) {
    if (slots_[i].state == SlotState::kDown) StartSlot(i);
  }
}

std::optional<uint64_t> PoolState::slot_task(int slot) const {
  if (slots_[slot].state != SlotState::kBusy) return std::nullopt;
  return slots_[slot].task_id;
}

std::string PoolState::TaskPrefix(uint64_t task_id) const {
  return absl::StrCat("task ", task_id, " on node ", options_.node_id, ": ");
}

void PoolState::Report(uint64_t task_id, v1::Outcome outcome, v1::FailureKind failure,
                       std::string error, int worker_pid, int64_t start_us) {
  v1::TaskResult r;
  r.set_task_id(task_id);
  r.set_outcome(outcome);
  r.set_failure(failure);
  r.set_error(std::move(error));
  r.set_node(options_.node_id);
  r.set_worker_pid(worker_pid);
  const int64_t now = now_us_();
  r.set_start_us(start_us != 0 ? start_us : now);
  r.set_end_us(now);
  sink_->TaskFinished(std::move(r));
}

void PoolState::Submit(v1::TaskAssignment task) {
  const uint64_t id = task.task_id();
  if (queued_ids_.count(id) != 0 || running_.count(id) != 0) {
    // The head never sends a task twice; if it did, running it twice would
    // be worse than ignoring the copy.
    spdlog::warn("task {} submitted again while already queued or running; ignored", id);
    return;
  }
  if (exe_running_.count(id) != 0) {
    spdlog::warn("task {} submitted again while its executable runs; ignored", id);
    return;
  }
  if (task.kind() != v1::PYTHON && task.kind() != v1::EXECUTABLE) {
    Report(id, v1::SYSTEM_ERROR, v1::FAILURE_REFUSED,
           absl::StrCat(TaskPrefix(id), "this agent runs only PYTHON and EXECUTABLE tasks, not ",
                        v1::TaskKind_Name(task.kind())));
    return;
  }
  if (task.has_grant() && task.grant().hold_only()) {
    Hold(task);
    return;
  }
  if (task.has_grant() && task.grant().cpus_size() > 0) {
    if (cores_.Has(id)) {
      spdlog::warn("task {} submitted again while it holds cores here; ignored", id);
      return;
    }
    cores_.Arrive(task);
  }
  queued_ids_.insert(id);
  queue_.push_back(std::move(task));
  FailQueuedIfBroken();
  Dispatch();
}

void PoolState::Cancel(uint64_t task_id, const std::string& reason) {
  const std::string why = reason.empty() ? "cancelled" : reason;
  if (queued_ids_.erase(task_id) != 0) {
    // Left in queue_ and skipped by Dispatch: erasing from the middle of a
    // long deque for each cancel of a big batch would be quadratic.
    PlacedEnded(task_id);
    Report(task_id, v1::CANCELED, v1::FAILURE_CANCELLED, why);
    Dispatch();
    return;
  }
  if (auto exe = exe_running_.find(task_id); exe != exe_running_.end()) {
    if (exe->second.cancelled) return;
    exe->second.cancelled = true;
    Report(task_id, v1::CANCELED, v1::FAILURE_CANCELLED, why, exe->second.pid,
           exe->second.start_us);
    spdlog::info("task {} cancelled while running: killing executable pid {} and its process group",
                 task_id, exe->second.pid);
    control_->KillExecutable(task_id);  // the slot stays taken until it is reaped
    return;
  }
  auto it = running_.find(task_id);
  if (it == running_.end()) {
    spdlog::debug("cancel of task {}: not queued or running here (already finished)", task_id);
    return;
  }
  const int slot = it->second;
  const int pid = slots_[slot].pid;
  // A worker cannot be interrupted in the middle of user code in any other
  // safe way; it is replaced once its exit is seen.
  FinishRunning(slot, v1::CANCELED, v1::FAILURE_CANCELLED, "", why);
  slots_[slot].state = SlotState::kKilled;
  spdlog::info("task {} cancelled while running: killing worker pid {} (slot {})", task_id, pid,
               slot);
  control_->KillWorker(slot);
}

void PoolState::OnReady(int slot) {
  Slot& s = slots_[slot];
  if (s.exiting) return;  // READY, then died: nothing to give it
  if (s.state != SlotState::kStarting) {
    OnProtocolError(slot, absl::FailedPreconditionError("worker sent READY twice"));
    return;
  }
  s.state = SlotState::kIdle;
  s.consecutive_start_failures = 0;
  start_failures_ = 0;
  idle_.push_back(slot);
  Dispatch();
}

void PoolState::OnTaskOutput(int slot, uint64_t task_id, v1::Outcome outcome, std::string data) {
  Slot& s = slots_[slot];
  if (s.state == SlotState::kKilled) return;  // cancelled meanwhile; already reported
  if (s.state != SlotState::kBusy || s.task_id != task_id) {
    OnProtocolError(slot, absl::FailedPreconditionError(absl::StrCat(
                              "worker sent a result for task ", task_id, " while ",
                              s.state == SlotState::kBusy ? absl::StrCat("running task ", s.task_id)
                                                          : std::string("not running any task"))));
    return;
  }
  FinishRunning(slot, outcome, v1::FAILURE_KIND_UNSPECIFIED, std::move(data), "");
  BackToIdle(slot);
}

void PoolState::OnTaskTooLarge(int slot, uint64_t task_id, uint64_t bytes) {
  Slot& s = slots_[slot];
  if (s.state == SlotState::kKilled) return;
  if (s.state != SlotState::kBusy || s.task_id != task_id) {
    OnProtocolError(slot, absl::FailedPreconditionError(
                              absl::StrCat("worker said the result of task ", task_id,
                                           " is too large while not running it")));
    return;
  }
  FinishRunning(
      slot, v1::SYSTEM_ERROR, v1::FAILURE_TOO_LARGE, "",
      absl::StrCat(TaskPrefix(task_id), "its result is ", bytes, " bytes, more than the ",
                   options_.max_result_bytes,
                   " bytes dragond accepts per task (dragond --max-payload-mb); return large data "
                   "in files, or let it go through shared memory (DragonExecutor(shm_threshold=...))"));
  BackToIdle(slot);
}

void PoolState::BackToIdle(int slot) {
  Slot& s = slots_[slot];
  if (s.exiting) return;  // stays kKilled until OnWorkerExit
  s.state = SlotState::kIdle;
  idle_.push_back(slot);
  Dispatch();
}

std::vector<uint64_t> PoolState::Reclaim(const std::vector<uint64_t>& task_ids) {
  std::vector<uint64_t> released;
  for (uint64_t id : task_ids) {
    // Left in queue_ and skipped by Dispatch, as for a cancel.
    if (queued_ids_.erase(id) != 0) {
      PlacedEnded(id);
      released.push_back(id);
    }
  }
  if (!released.empty()) Dispatch();
  return released;
}

void PoolState::OnWorkerExiting(int slot) {
  slots_[slot].exiting = true;
  RemoveIdle(slot);
}

void PoolState::OnProtocolError(int slot, const absl::Status& error) {
  Slot& s = slots_[slot];
  if (s.state == SlotState::kKilled || s.state == SlotState::kDown) return;
  spdlog::error("worker pid {} (slot {}) broke the pipe protocol: {}; killing it", s.pid, slot,
                std::string(error.message()));
  if (s.state == SlotState::kBusy) {
    FinishRunning(slot, v1::SYSTEM_ERROR, v1::FAILURE_INTERNAL, "",
                  absl::StrCat(TaskPrefix(s.task_id), "worker pid ", s.pid, ": ", error.message()));
  }
  RemoveIdle(slot);
  s.state = SlotState::kKilled;
  control_->KillWorker(slot);
}

void PoolState::OnWorkerExit(int slot, const std::string& how, int signal) {
  Slot& s = slots_[slot];
  const SlotState was = s.state;
  if (was == SlotState::kDown) return;
  if (was == SlotState::kBusy) {
    const uint64_t id = s.task_id;
    spdlog::error("worker pid {} (slot {}) died running task {} ({})", s.pid, slot, id, how);
    FinishRunning(slot, v1::SYSTEM_ERROR, v1::FAILURE_WORKER_LOST, "",
                  absl::StrCat(TaskPrefix(id), "worker pid ", s.pid, " died (", how, ")"), signal);
  }
  RemoveIdle(slot);
  s.state = SlotState::kDown;
  s.exiting = false;
  if (was == SlotState::kStarting) {
    const std::string what =
        s.ready_timed_out
            ? absl::StrCat("worker pid ", s.pid, " sent no READY within ",
                           options_.ready_timeout_us / 1'000'000, " s and was killed")
            : absl::StrCat("worker pid ", s.pid, " ", how, " before it was ready");
    s.ready_timed_out = false;
    StartFailed(slot, absl::StrCat(what, " (see ", control_->WorkerLogPath(slot), ")"));
  } else {
    if (was == SlotState::kIdle) spdlog::warn("idle worker pid {} (slot {}) {}", s.pid, slot, how);
    s.restart_at_us = now_us_();  // a worker that was ready once: replace it at once
  }
  s.pid = 0;
  Tick();
}

void PoolState::Tick() {
  const int64_t now = now_us_();
  if (!held_.empty()) {
    for (v1::TaskResult& r : held_.TakeDue(now)) {
      spdlog::warn("task {}: reported now; its process was killed by a stop signal but this agent "
                   "was not stopped within {} ms", r.task_id(), options_.stop_signal_hold_us / 1000);
      sink_->TaskFinished(std::move(r));
    }
  }
  if (limited_deadline_ + limited_memory_ > 0) EnforceLimits(now);
  for (int i = 0; i < slots(); ++i) {
    Slot& s = slots_[i];
    if (s.state == SlotState::kDown && s.restart_at_us <= now) {
      StartSlot(i);
    } else if (s.state == SlotState::kStarting && !s.ready_timed_out &&
               now - s.started_at_us >= options_.ready_timeout_us) {
      spdlog::error("slot {}: worker pid {} sent no READY within {} s; killing it", i, s.pid,
                    options_.ready_timeout_us / 1'000'000);
      s.ready_timed_out = true;
      control_->KillWorker(i);  // its exit comes back through OnWorkerExit
    }
  }
}

std::optional<int64_t> PoolState::NextWakeUs() const {
  std::optional<int64_t> next;
  for (const Slot& s : slots_) {
    std::optional<int64_t> at;
    if (s.state == SlotState::kDown) at = s.restart_at_us;
    if (s.state == SlotState::kStarting && !s.ready_timed_out) {
      at = s.started_at_us + options_.ready_timeout_us;
    }
    if (at && (!next || *at < *next)) next = at;
  }
  auto consider = [&next](int64_t at) {
    if (!next || at < *next) next = at;
  };
  if (limited_memory_ > 0) consider(next_memory_check_us_);
  if (std::optional<int64_t> held = held_.NextReleaseUs()) consider(*held);
  if (limited_deadline_ > 0) {
    for (const Slot& s : slots_) {
      if (s.state == SlotState::kBusy && s.limits.deadline_us != 0) consider(s.limits.deadline_us);
    }
    for (const auto& [id, exe] : exe_running_) {
      if (!exe.cancelled && exe.limits.deadline_us != 0) consider(exe.limits.deadline_us);
    }
  }
  return next;
}

void PoolState::StartSlot(int slot) {
  absl::StatusOr<int> pid = control_->StartWorker(slot);
  if (!pid.ok()) {
    StartFailed(slot, absl::StrCat("cannot start a worker: ", pid.status().message()));
    return;
  }
  Slot& s = slots_[slot];
  s.state = SlotState::kStarting;
  s.pid = *pid;
  s.started_at_us = now_us_();
  s.ready_timed_out = false;
  spdlog::debug("slot {}: started worker pid {}", slot, *pid);
}

void PoolState::StartFailed(int slot, const std::string& what) {
  Slot& s = slots_[slot];
  s.state = SlotState::kDown;
  s.pid = 0;
  ++s.consecutive_start_failures;
  ++start_failures_;
  last_start_failure_ = what;
  int64_t delay = kFirstRestartDelayUs;
  for (int i = 1; i < s.consecutive_start_failures && delay < options_.max_restart_delay_us; ++i) {
    delay *= 2;
  }
  delay = std::min(delay, options_.max_restart_delay_us);
  s.restart_at_us = now_us_() + delay;
  spdlog::error("slot {}: {}; retrying in {} ms", slot, what, delay / 1000);
  FailQueuedIfBroken();
}

void PoolState::FailQueuedIfBroken() {
  // "Broken" = no worker is ready or busy and starts keep failing: waiting
  // would hang the workflow silently, so tell the user why instead.
  // Executables need no worker and stay queued.
  if (start_failures_ < options_.max_startup_failures || busy_ > executables_running() ||
      !idle_.empty()) {
    return;
  }
  std::deque<v1::TaskAssignment> keep;
  for (auto& task : queue_) {
    const uint64_t id = task.task_id();
    if (queued_ids_.count(id) == 0) continue;
    if (task.kind() == v1::EXECUTABLE) {
      keep.push_back(std::move(task));
      continue;
    }
    queued_ids_.erase(id);
    PlacedEnded(id);
    Report(id, v1::SYSTEM_ERROR, v1::FAILURE_WORKER_START,
           absl::StrCat(TaskPrefix(id), "no worker could start: ", last_start_failure_));
  }
  queue_.swap(keep);
}

void PoolState::Dispatch() {
  // FIFO over both kinds while a slot is free. A Python task at the front
  // with no ready worker (workers still starting) does not hold back the
  // executables behind it: they need only a slot. A placed task waits until
  // plain tasks leave its cores (none starts while it waits: its cores count
  // from its arrival); placed tasks behind it may start before it if theirs
  // are free.
  size_t i = 0;
  while (i < queue_.size()) {
    // Nothing can start: no room for plain tasks and no placed task waiting.
    if (cores_.queued() == 0 && (busy_ >= slots() || !PlainRoom())) break;
    v1::TaskAssignment& front = queue_[i];
    const uint64_t id = front.task_id();
    if (queued_ids_.count(id) == 0) {  // cancelled while queued
      queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    const int cores = front.has_grant() ? front.grant().cpus_size() : 0;
    const bool room = cores > 0 ? PlacedRoom(cores) : busy_ < slots() && PlainRoom();
    if (!room || (front.kind() == v1::PYTHON && idle_.empty())) {
      ++i;  // look for what can start behind it
      continue;
    }
    v1::TaskAssignment task = std::move(front);
    queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(i));
    queued_ids_.erase(id);
    if (task.kind() == v1::EXECUTABLE) {
      StartExecutable(std::move(task));
      continue;
    }
    const int slot = idle_.back();
    idle_.pop_back();
    Slot& s = slots_[slot];
    s.state = SlotState::kBusy;
    s.task_id = id;
    s.start_us = now_us_();
    s.limits = TaskLimitsOf(task, s.start_us);
    // A Python task's memory is what its processes hold beyond the worker's own.
    if (s.limits.memory_bytes != 0) s.limits.baseline_bytes = control_->TreeMemoryBytes(s.pid);
    NoteLimits(s.limits, +1);
    ++busy_;
    running_[id] = slot;
    if (s.limits.cores > 0) {
      PlacedStarted(id);
      control_->PinWorker(slot, cores_.Cpus(id));
      s.pinned_version = -1;
    } else {
      ++plain_running_;
      if (s.pinned_version != cores_.plain_version()) {
        control_->PinWorker(slot, cores_.plain_cpus());
        s.pinned_version = cores_.plain_version();
      }
    }
    control_->SendTask(slot, std::move(task));
    // Told after the worker has the task: telling wakes the head connection's writer,
    // which on a busy node may take this thread's CPU before the task is sent.
    v1::TaskStarted started;
    started.set_task_id(id);
    started.set_worker_pid(s.pid);
    started.set_start_us(s.start_us);
    sink_->TaskStarted(std::move(started));
  }
}

void PoolState::FinishRunning(int slot, v1::Outcome outcome, v1::FailureKind failure,
                              std::string data, std::string error, int signal) {
  Slot& s = slots_[slot];
  v1::TaskResult r;
  r.set_task_id(s.task_id);
  r.set_outcome(outcome);
  r.set_failure(failure);
  r.set_data(std::move(data));
  r.set_error(std::move(error));
  r.set_node(options_.node_id);
  r.set_worker_pid(s.pid);
  r.set_start_us(s.start_us);
  r.set_end_us(now_us_());
  running_.erase(s.task_id);
  --busy_;
  NoteLimits(s.limits, -1);
  if (s.limits.cores > 0) {
    PlacedEnded(s.task_id);
  } else {
    --plain_running_;
  }
  s.limits = Limits{};
  // The caller sets the slot's next state; kIdle here would be wrong for a
  // killed or dead worker.
  s.state = SlotState::kKilled;
  Emit(std::move(r), signal);
}

void PoolState::Emit(v1::TaskResult result, int signal) {
  if (!IsStopSignal(signal) || options_.stop_signal_hold_us <= 0) {
    sink_->TaskFinished(std::move(result));
    return;
  }
  spdlog::warn("task {}: its process pid {} was killed by signal {} ({}), which this agent did not "
               "send; holding the report {} ms: if the agent is being stopped too (scancel, the "
               "job's end, Ctrl-C), the task is lost with the node and the head runs it again",
               result.task_id(), result.worker_pid(), signal,
               sigabbrev_np(signal) ? sigabbrev_np(signal) : "?", options_.stop_signal_hold_us / 1000);
  held_.Hold(std::move(result), now_us_() + options_.stop_signal_hold_us);
}

PoolState::~PoolState() {
  for (uint64_t id : held_.DropAll()) {
    spdlog::warn("task {}: not reported: its process was killed by a stop signal and this agent "
                 "stops too; the head runs it again as its node is lost", id);
  }
}

void PoolState::RemoveIdle(int slot) {
  idle_.erase(std::remove(idle_.begin(), idle_.end(), slot), idle_.end());
}

}  // namespace dragon::agent
