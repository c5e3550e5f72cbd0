#include "agent/task_limits.h"

#include "absl/strings/str_cat.h"

namespace dragon::agent {
namespace {

// The end of a breach's message: what was killed for it.
std::string KilledText(int pid, bool worker) {
  return absl::StrCat(worker ? "worker pid " : "its process pid ", pid,
                      " and every process it started were killed");
}

}  // namespace

TaskLimits TaskLimitsOf(const v1::TaskAssignment& task, int64_t now) {
  TaskLimits l;
  if (!task.has_grant()) return l;
  const v1::ResourceGrant& g = task.grant();
  l.walltime_s = g.walltime_s();
  if (g.walltime_s() > 0) l.deadline_us = now + int64_t{g.walltime_s()} * 1'000'000;
  l.memory_bytes = g.memory_bytes();
  l.cores = g.hold_only() ? 0 : g.cpus_size();
  return l;
}

std::optional<LimitBreach> CheckLimits(const TaskLimits& l, int64_t now, bool check_memory,
                                       int pid, bool worker,
                                       const std::function<uint64_t(int)>& tree_memory_bytes) {
  if (l.deadline_us != 0 && now >= l.deadline_us) {
    return LimitBreach{v1::FAILURE_TIMED_OUT,
                       absl::StrCat("ran past its walltime of ", l.walltime_s,
                                    " s (parsl_resource_specification 'walltime' / "
                                    "'running_time_min'); ",
                                    KilledText(pid, worker))};
  }
  if (!check_memory || l.memory_bytes == 0 || pid <= 0) return std::nullopt;
  const uint64_t tree = tree_memory_bytes(pid);
  const uint64_t used = tree > l.baseline_bytes ? tree - l.baseline_bytes : 0;
  if (used <= l.memory_bytes) return std::nullopt;
  return LimitBreach{
      v1::FAILURE_OUT_OF_MEMORY,
      absl::StrCat("its processes used ", used >> 20, " MiB of resident memory",
                   l.baseline_bytes > 0
                       ? absl::StrCat(" beyond the ", l.baseline_bytes >> 20,
                                      " MiB its Python worker held before it")
                       : std::string(),
                   ", over its memory limit of ", l.memory_bytes >> 20, " MiB (", l.memory_bytes,
                   " bytes; parsl_resource_specification 'memory'); ", KilledText(pid, worker))};
}

}  // namespace dragon::agent
