// The environment a task runs with, from its grant (docs/INTERFACES.md
// "Resources and MPI"):
//   - GPUs: CUDA_VISIBLE_DEVICES and ROCR_VISIBLE_DEVICES = the granted ids;
//     on a node that has GPUs, a task granted none sees none (both empty);
//   - a placed task: DRAGON_CPUS (the CPU numbers it is pinned to),
//     DRAGON_GPUS, DRAGON_MEMORY_LIMIT (bytes, when limited);
//   - an MPI task that this node leads (grant.mpi, not hold-only): what
//     Parsl's MPIExecutor gives an app, computed from the placement:
//     PARSL_NUM_NODES, PARSL_RANKS_PER_NODE, PARSL_NUM_RANKS,
//     PARSL_MPI_NODELIST, PARSL_LAUNCHER_OPTIONS (when given),
//     PARSL_MPIEXEC_PREFIX, PARSL_SRUN_PREFIX, PARSL_APRUN_PREFIX (Parsl's
//     exact forms) and PARSL_MPI_PREFIX (the node's launcher's), plus
//     DRAGON_MPI_TASK (<run id>/<task id>, which every rank inherits, so the
//     agents of the gang can find leftovers when it ends).
#ifndef DRAGON_AGENT_TASK_ENV_H_
#define DRAGON_AGENT_TASK_ENV_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/common.pb.h"

namespace dragon::agent {

using EnvList = std::vector<std::pair<std::string, std::string>>;

// How PARSL_MPI_PREFIX launches, from the agent's environment:
//   DRAGON_MPI_LAUNCHER  "hydra"/"mpiexec" (MPICH's mpiexec; the default outside
//                        Slurm), "srun" (the default inside a Slurm job,
//                        $SLURM_JOB_ID), "aprun", or a command line of the
//                        user's whose words may hold {ranks} {ranks_per_node}
//                        {nodes} {hosts} (comma-separated), e.g.
//                        "mpirun -np {ranks} --host {hosts}"
//   DRAGON_MPIEXEC       the mpiexec to name (default: mpiexec.hydra when it is
//                        in PATH, else mpiexec)
//   DRAGON_MPI_BIND      the rank binder appended to every prefix
//                        (dragon-mpi-bind next to dragon-agent, when present;
//                        "none": no binding)
// The same variables as the @mpi_app launcher (agent/mpi_launcher.h).
struct MpiPrefixConfig {
  enum class Kind { kMpiexec, kSrun, kAprun, kCommand };
  Kind kind = Kind::kMpiexec;
  std::string mpiexec = "mpiexec";
  std::string command;  // kCommand: the template
  std::string binder;   // "" = none
  std::string Describe() const;
};

using GetEnvFn = std::function<const char*(const char*)>;
MpiPrefixConfig MpiPrefixConfigFrom(const GetEnvFn& getenv, const std::string& self_dir,
                                    const std::function<bool(const std::string&)>& in_path);

// What the environment depends on besides the task.
struct NodeEnv {
  std::string run_id;
  bool has_gpus = false;       // this node hands out GPUs
  std::vector<int> cpu_ids;    // the agent's CPU numbers; grants index them
  MpiPrefixConfig mpi;
  // Given to every Python worker (WorkerBaseEnvironment) as DRAGON_SHM_POOL
  // and DRAGON_AGENT_DATA_SOCKET; "" = not set (no pool, no data plane).
  // (DRAGON_NODE_ID, the third thing a worker needs for task data across
  // nodes, it has from WorkerPool, with its slot and run dir.)
  std::string shm_pool_path;
  std::string data_socket;
};

// The CPU numbers of a grant's indices (indices past the agent's set are
// skipped).
std::vector<int> GrantedCpus(const v1::ResourceGrant& grant, const std::vector<int>& cpu_ids);

// Parsl's variables for an MPI placement (see above); `task_id` is for the
// rank binder.
EnvList ParslMpiEnv(const v1::MpiPlacement& placement, const MpiPrefixConfig& config,
                    uint64_t task_id);

// Everything a task gets on top of the worker's (or agent's) environment.
// `plain_gpu_hiding`: include the empty GPU variables for a task granted no
// GPU on a GPU node (executables need them; Python workers already have
// them in their own environment).
EnvList TaskEnvironment(const v1::TaskAssignment& task, const NodeEnv& node,
                        bool plain_gpu_hiding);

// The variables every Python worker starts with on this node: GPU hiding,
// and where the node's task data lives (its pool and data socket).
EnvList WorkerBaseEnvironment(const NodeEnv& node);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_TASK_ENV_H_
