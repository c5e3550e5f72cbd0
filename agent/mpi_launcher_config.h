// Which MPI launcher this node uses and how to find it: read once from the
// agent's environment (docs/INTERFACES.md "MPI jobs"), so that dragond's
// launchers can pass it on (dragond start --agent-env NAME).
#ifndef DRAGON_AGENT_MPI_LAUNCHER_CONFIG_H_
#define DRAGON_AGENT_MPI_LAUNCHER_CONFIG_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dragon::agent {

enum class MpiLauncherKind { kHydra, kSrun, kCommand };

// How MPI jobs are launched on this node. From the agent's environment
// (MpiLauncherConfigFromEnv):
//   DRAGON_MPI_LAUNCHER     "hydra" (MPICH's mpiexec; the default outside
//                           Slurm), "srun" (the default inside a Slurm job),
//                           or a command line of the user's, whose words may
//                           hold {ranks} {ranks_per_node} {nodes} {hosts}
//                           (comma-separated) and {hostfile} (one host per
//                           rank), e.g. "mpirun -np {ranks} --host {hosts}"
//   DRAGON_MPIEXEC          hydra's mpiexec (default mpiexec.hydra, else mpiexec)
//   DRAGON_MPI_RANK_WRAPPER dragon-mpi-rank (default: next to dragon-agent);
//                           "none": no wrapper (no per-rank exit codes)
//   HYDRA_LAUNCHER_EXEC     hydra's bootstrap to other hosts (default ssh);
//                           read by hydra itself, passed as -launcher-exec
struct MpiLauncherConfig {
  MpiLauncherKind kind = MpiLauncherKind::kHydra;
  std::string mpiexec = "mpiexec.hydra";
  std::string srun = "srun";
  std::vector<std::string> command;  // kCommand: the template's words
  std::string rank_wrapper;          // "" = none
  std::string launcher_exec;         // hydra -launcher-exec; "" = hydra's default

  // "hydra (mpiexec.hydra, bootstrap ssh)" etc., for logs and errors.
  std::string Describe() const;
};

using GetEnv = std::function<const char*(const char*)>;
// `self_dir`: where dragon-agent is (the wrapper's default place); `in_path`
// says whether a program is found in PATH.
absl::StatusOr<MpiLauncherConfig> MpiLauncherConfigFromEnv(
    const GetEnv& getenv, const std::string& self_dir,
    const std::function<bool(const std::string&)>& in_path);
absl::StatusOr<MpiLauncherConfig> MpiLauncherConfigFromEnv();  // this process's

// Words of a command line ("a 'b c' d\ e" -> a, b c, d e); no shell expansion.
absl::StatusOr<std::vector<std::string>> SplitCommandLine(const std::string& line);

// `argv0` resolved like execvp does (the agent's PATH), so that a launcher
// that is not there fails the job's start with its name, not a bare exit 127.
absl::StatusOr<std::string> ResolveProgram(const std::string& argv0);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_LAUNCHER_CONFIG_H_
