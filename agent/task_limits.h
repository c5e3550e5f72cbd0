// The walltime and memory limits of a running task (from its grant) and the
// judgement whether it broke one, with the message the user reads. Kept
// apart from the pool's bookkeeping, which only decides when to look and
// what to kill.
#ifndef DRAGON_AGENT_TASK_LIMITS_H_
#define DRAGON_AGENT_TASK_LIMITS_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "proto/agent.pb.h"
#include "proto/common.pb.h"

namespace dragon::agent {

// What is enforced on a running task.
struct TaskLimits {
  int64_t deadline_us = 0;  // 0 = none
  uint32_t walltime_s = 0;
  uint64_t memory_bytes = 0;  // 0 = none
  // What the idle Python worker held when the task started: not the task's.
  uint64_t baseline_bytes = 0;
  int cores = 0;              // placed: its granted CPUs; 0 = a plain task

  bool any() const { return deadline_us != 0 || memory_bytes != 0; }
};

// The limits of `task` starting at `now` (none without a grant).
TaskLimits TaskLimitsOf(const v1::TaskAssignment& task, int64_t now);

struct LimitBreach {
  v1::FailureKind kind;  // FAILURE_TIMED_OUT or FAILURE_OUT_OF_MEMORY
  std::string why;       // for the user, after "task N on node X: "
};

// Whether the task running as `pid` (a Python `worker`'s, or its own
// process) is past its deadline, or, when `check_memory`, holds more than
// its limit beyond its baseline; `tree_memory_bytes(pid)` is asked only then.
std::optional<LimitBreach> CheckLimits(const TaskLimits& limits, int64_t now, bool check_memory,
                                       int pid, bool worker,
                                       const std::function<uint64_t(int)>& tree_memory_bytes);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_TASK_LIMITS_H_
