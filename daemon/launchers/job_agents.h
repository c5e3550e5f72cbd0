// `dragond agents --head ADDR --run-dir DIR [--pbs-exec X] ...`, run inside a
// batch job: starts one agent on every node of the job for a head that runs
// elsewhere (on the login node), with the launcher of a job (the pbs launcher
// in a PBS job, the slurm launcher's one srun step in a Slurm job, as under
// Slurm's qsub wrapper), then waits until those agents are gone (the head told
// them to leave, or they died) or until SIGTERM/SIGINT (qdel, scancel,
// walltime), when it ends them. The PBS job script of the login-node path
// (pbs_batch.h) is one line of it. The token comes from $DRAGON_TOKEN (qsub -V
// hands it over) or --token-file, never the command line; it is scrubbed from
// this process's environment at once. Progress goes to stderr (the job's output).
#ifndef DRAGON_DAEMON_LAUNCHERS_JOB_AGENTS_H_
#define DRAGON_DAEMON_LAUNCHERS_JOB_AGENTS_H_

#include <string>

#include "daemon/launchers/launcher_factory.h"

namespace dragon::daemon {

struct JobAgentsConfig {
  std::string head;      // HOST:PORT the agents dial
  std::string run_dir;   // the head's run directory (shared filesystem)
  std::string token_file;  // "" = $DRAGON_TOKEN
  LauncherConfig launcher;  // kind auto, slurm or pbs; pbs_exec, ssh_command
  std::string agent_binary;
  int workers = 0;
  int shm_pool_mb = -1;  // dragon-agent --shm-pool-mb; -1 = the agent's default
  std::string python;
  std::string log_level = "info";
  std::string tls_ca;
  std::string agent_env = "PYTHONPATH";
};

// The process's exit code: 0 once the agents are gone or it was told to
// stop, 1 when they could not be started, 2 for a wrong command line.
int RunJobAgents(const JobAgentsConfig& config);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_JOB_AGENTS_H_
