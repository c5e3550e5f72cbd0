// PoolState's resource side: cores placed for tasks (and shared with MPI
// jobs), the per-task limits it enforces (deadline, memory), and holding a
// task until its cores are free. Split from pool_state.cc by responsibility;
// the class is one (pool_state.h).
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/pool_state.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {

void PoolState::NoteLimits(const Limits& limits, int delta) {
  if (limits.deadline_us != 0) limited_deadline_ += delta;
  if (limits.memory_bytes != 0) {
    if (delta > 0 && limited_memory_ == 0) next_memory_check_us_ = now_us_() + options_.memory_check_us;
    limited_memory_ += delta;
  }
}

void PoolState::PlacedStarted(uint64_t task_id) {
  const PlacedCores::Entry* placed = cores_.Start(task_id);
  if (placed == nullptr) return;
  if (placed->mpi) control_->MpiShareHeld(task_id, placed->cpus);
  PlainCpusChanged();
}

void PoolState::PlacedEnded(uint64_t task_id) {
  std::optional<PlacedCores::Entry> placed = cores_.End(task_id);
  if (!placed || !placed->running) return;
  if (placed->mpi) control_->MpiShareReleased(task_id);
  PlainCpusChanged();
}

bool PoolState::Hold(const v1::TaskAssignment& task) {
  const PlacedCores::Entry* held = cores_.Hold(task);
  if (held == nullptr) return false;
  if (held->mpi) control_->MpiShareHeld(task.task_id(), held->cpus);
  PlainCpusChanged();
  return true;
}

void PoolState::EndHold(uint64_t task_id) {
  if (!cores_.IsHold(task_id)) return;
  PlacedEnded(task_id);
  Dispatch();
}

void PoolState::PlainCpusChanged() {
  const std::vector<uint32_t>& plain = cores_.RecomputePlainCpus();
  control_->SetPlainCpus(plain);
  for (int slot = 0; slot < slots(); ++slot) {
    Slot& s = slots_[slot];
    if (s.state != SlotState::kBusy || s.limits.cores > 0) continue;
    control_->PinWorker(slot, plain);
    s.pinned_version = cores_.plain_version();
  }
}

void PoolState::EnforceLimits(int64_t now) {
  const bool check_memory = limited_memory_ > 0 && now >= next_memory_check_us_;
  if (check_memory) next_memory_check_us_ = now + options_.memory_check_us;
  struct Kill {
    uint64_t task_id;
    int slot;  // -1: an executable
    LimitBreach breach;
  };
  std::vector<Kill> kills;
  auto tree_memory_bytes = [this](int pid) { return control_->TreeMemoryBytes(pid); };
  auto judge = [&](uint64_t id, int slot, int pid, const Limits& l) {
    std::optional<LimitBreach> breach =
        CheckLimits(l, now, check_memory, pid, slot >= 0, tree_memory_bytes);
    if (breach) kills.push_back({id, slot, *std::move(breach)});
  };
  for (int slot = 0; slot < slots(); ++slot) {
    const Slot& s = slots_[slot];
    if (s.state == SlotState::kBusy && s.limits.any()) judge(s.task_id, slot, s.pid, s.limits);
  }
  for (const auto& [id, exe] : exe_running_) {
    if (!exe.cancelled && exe.limits.any()) judge(id, -1, exe.pid, exe.limits);
  }
  for (Kill& k : kills) {
    KillForLimit(k.task_id, k.slot, k.breach.kind, absl::StrCat(TaskPrefix(k.task_id), k.breach.why));
  }
}

void PoolState::KillForLimit(uint64_t task_id, int slot, v1::FailureKind kind,
                             const std::string& why) {
  spdlog::warn("{}", why);
  if (slot >= 0) {
    Slot& s = slots_[slot];
    if (s.state != SlotState::kBusy || s.task_id != task_id) return;
    FinishRunning(slot, v1::SYSTEM_ERROR, kind, "", why);
    s.state = SlotState::kKilled;
    control_->KillWorker(slot);  // replaced once its exit is seen
    return;
  }
  auto it = exe_running_.find(task_id);
  if (it == exe_running_.end() || it->second.cancelled) return;
  RunningExecutable& exe = it->second;
  exe.cancelled = true;  // reported here; its end frees the cores and the slot
  NoteLimits(exe.limits, -1);
  exe.limits.deadline_us = 0;
  exe.limits.memory_bytes = 0;
  Report(task_id, v1::SYSTEM_ERROR, kind, why, exe.pid, exe.start_us);
  control_->KillExecutable(task_id);
}

}  // namespace dragon::agent
