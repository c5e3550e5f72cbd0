// What this node offers, as the agent registers it: the cores this process
// may run on (its CPU affinity, which a batch system's grant sets, never the
// machine's count; within a Slurm job at most $SLURM_CPUS_ON_NODE), memory (the smaller of the machine's and the cgroup's
// limit) and GPUs.
#ifndef DRAGON_AGENT_NODE_RESOURCES_H_
#define DRAGON_AGENT_NODE_RESOURCES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dragon::agent {

// The CPUs of this process's affinity, capped by $SLURM_CPUS_ON_NODE when it
// is set (inside a Slurm job: the CPUs the job holds on this node, which a
// step without binding may not show in its affinity).
uint32_t UsableCores();

// The rule of UsableCores: `affinity` CPUs, at most `slurm_cpus_on_node` when
// that is a positive number (unset, empty or malformed: no cap); at least 1.
uint32_t CapCores(uint32_t affinity, const char* slurm_cpus_on_node);

// Physical memory, capped by the cgroup v2 memory.max of this process when
// that is a number.
uint64_t UsableMemoryBytes();

// GPU ids: `flag` ("none" = none; a comma-separated list), else
// $CUDA_VISIBLE_DEVICES, else $ROCR_VISIBLE_DEVICES, else the GPUs nvidia-smi
// lists (0..n-1), else none. InvalidArgument for a malformed list.
absl::StatusOr<std::vector<std::string>> DetectGpus(const std::string& flag);

// The ids in a comma-separated device list (as in CUDA_VISIBLE_DEVICES):
// empty entries are an error, naming `origin`.
absl::StatusOr<std::vector<std::string>> ParseDeviceList(const std::string& list,
                                                         const std::string& origin);

// When this node's allocation (batch job) ends, in microseconds since the
// epoch, 0 = unknown: the earlier of `flag_seconds` (dragon-agent --job-end,
// Unix seconds; <= 0 = not given) and `slurm_job_end_time` ($SLURM_JOB_END_TIME,
// which newer Slurm releases set; unset, empty, 0 or malformed = not given).
int64_t AllocationEndMicros(int64_t flag_seconds, const char* slurm_job_end_time);

// "" when `block_id` can name a block (1..64 characters: letters, digits,
// '.', '_', '-'), else why not.
std::string BlockIdProblem(const std::string& block_id);

// The node id of an agent of block `block_id` on `host` when none is given:
// HOST-bBLOCK, so that the agents of two blocks on one host (LocalProvider)
// stay apart; HOST alone without a block.
std::string DefaultNodeId(const std::string& host, const std::string& block_id);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_NODE_RESOURCES_H_
