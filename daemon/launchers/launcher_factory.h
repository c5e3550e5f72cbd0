// Picks and builds the launcher dragond start asked for (--launcher), with
// the options of that launcher.
#ifndef DRAGON_DAEMON_LAUNCHERS_LAUNCHER_FACTORY_H_
#define DRAGON_DAEMON_LAUNCHERS_LAUNCHER_FACTORY_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/launchers/launcher.h"

namespace dragon::daemon {

// The launchers dragond knows, for --help and errors.
inline constexpr char kLauncherKinds[] = "auto, local, ssh, slurm, pbs, none";

struct LauncherConfig {
  // auto: slurm inside a Slurm job, pbs inside a PBS job, else local.
  std::string kind = "auto";
  std::string local_node_id;  // the node id of a local agent (this host's name)
  int agent_restarts = 5;     // local
  std::string hosts;          // ssh: --hosts h1,h2
  std::string hostfile;       // ssh: --hostfile F
  std::string ssh_command = "ssh";  // ssh: the program and its options, split on spaces
  // slurm, pbs: with `nodes` (> 0) and `time`, submit a job of that many
  // nodes from a login node; without, start agents inside the job dragond
  // runs in.
  int nodes = 0;
  std::string time;       // Slurm's formats (ParseSlurmTime)
  std::string partition;  // slurm
  std::string account;    // slurm, pbs
  std::string queue;      // pbs
  std::vector<std::string> sbatch_args;  // slurm: more sbatch options
  std::vector<std::string> qsub_args;    // pbs: more qsub options
  std::string pbs_exec = "ssh";          // pbs: ssh, pbsdsh or mpiexec
  int start_timeout_s = 120;             // slurm, pbs: for the submitted job to start
  std::string dragond_binary;            // pbs: the job script runs `dragond agents`
};

// The process's environment (EnvLookup: launcher.h).
EnvLookup ProcessEnv();

// "auto" resolved against the environment; other kinds are returned as given.
std::string ResolveLauncherKind(const std::string& kind, const EnvLookup& env);

// nullptr for "none" (agents are started by someone else). Errors name the
// option that is wrong (unknown launcher, a malformed or empty host list, a
// launcher whose requirements are missing: no Slurm in PATH, not inside a
// job and no --nodes, ...). Inside a Slurm job this runs `scontrol show
// hostnames` for the job's nodes.
absl::StatusOr<std::unique_ptr<Launcher>> MakeLauncher(const LauncherConfig& config,
                                                       const EnvLookup& env);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_LAUNCHER_FACTORY_H_
