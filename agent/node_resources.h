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

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_NODE_RESOURCES_H_
