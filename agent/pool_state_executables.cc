// PoolState's EXECUTABLE tasks (bash apps, programs; payload = ExecutableSpec):
// started without a worker, each occupying a slot until its process ends.
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/pool_state.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {

void PoolState::StartExecutable(v1::TaskAssignment task) {
  const uint64_t id = task.task_id();
  const bool placed = task.has_grant() && task.grant().cpus_size() > 0;
  // Its cores are taken before it starts, so that plain executables started
  // from now on keep off them.
  if (placed) PlacedStarted(id);
  absl::StatusOr<int> pid = control_->StartExecutable(task);
  if (!pid.ok()) {
    if (placed) PlacedEnded(id);
    spdlog::warn("task {}: {}", id, std::string(pid.status().message()));
    Report(id, v1::SYSTEM_ERROR, v1::FAILURE_KIND_UNSPECIFIED,
           absl::StrCat(TaskPrefix(id), pid.status().message()));
    return;
  }
  RunningExecutable& exe = exe_running_[id];
  exe.pid = *pid;
  exe.start_us = now_us_();
  exe.limits = TaskLimitsOf(task, exe.start_us);
  NoteLimits(exe.limits, +1);
  if (!placed) ++plain_running_;
  ++busy_;
  v1::TaskStarted started;
  started.set_task_id(id);
  started.set_worker_pid(exe.pid);
  started.set_start_us(exe.start_us);
  sink_->TaskStarted(std::move(started));
}

void PoolState::OnExecutableDone(uint64_t task_id, v1::Outcome outcome, std::string data,
                                 std::string error, int signal) {
  auto it = exe_running_.find(task_id);
  if (it == exe_running_.end()) return;
  const RunningExecutable exe = it->second;
  exe_running_.erase(it);
  --busy_;
  NoteLimits(exe.limits, -1);
  if (exe.limits.cores > 0) {
    PlacedEnded(task_id);
  } else {
    --plain_running_;
  }
  if (!exe.cancelled) {
    v1::TaskResult r;
    r.set_task_id(task_id);
    r.set_outcome(outcome);
    r.set_data(std::move(data));
    if (!error.empty()) r.set_error(absl::StrCat(TaskPrefix(task_id), error));
    r.set_node(options_.node_id);
    r.set_worker_pid(exe.pid);
    r.set_start_us(exe.start_us);
    r.set_end_us(now_us_());
    Emit(std::move(r), signal);
  }
  Dispatch();
}

}  // namespace dragon::agent
