// Inside a Slurm allocation (`dragond start` in a batch script, under
// salloc, or in an interactive step; --launcher auto picks it when
// SLURM_JOB_ID is set): one agent on every node of the job, all started by
// ONE srun step,
//
//   srun --nodes=N --ntasks=N --ntasks-per-node=1 --cpus-per-task=C
//        --kill-on-bad-exit=0 --overlap --mpi=none --export=ALL --label
//        --job-name=dragon-agents dragon-agent --head=... --run-dir=... ...
//
// C is the smallest CPU count the job holds on a node
// ($SLURM_JOB_CPUS_PER_NODE), so each agent is bound to the CPUs of its grant
// (the agent counts its CPU affinity, capped by $SLURM_CPUS_ON_NODE).
// --overlap: the agents' step runs as long as the head, and without it no
// other step (an srun of the user's or of a task, the step dragond itself runs
// in) could start beside it. No --node-id: each agent takes its host name.
// The token reaches the agents through srun's environment (--export=ALL), the
// step's output goes to <run dir>/srun-agents.log. One agent that dies is a
// lost node (its stream ends); the step's end is logged with its exit status
// and that file's tail, and every node it carried is lost. Stop: the head has
// told the agents to leave; a step still running after the grace gets SIGTERM
// (srun cancels its step), again, then scancel JOB.STEP and SIGKILL.
#ifndef DRAGON_DAEMON_LAUNCHERS_SLURM_LAUNCHER_H_
#define DRAGON_DAEMON_LAUNCHERS_SLURM_LAUNCHER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/launchers/command_group.h"
#include "daemon/launchers/launcher.h"

namespace dragon::daemon {

struct SlurmLauncherOptions {
  std::string job_id;              // $SLURM_JOB_ID
  std::vector<std::string> nodes;  // scontrol show hostnames $SLURM_JOB_NODELIST
  int cpus_per_task = 0;           // 0: srun's default
};

// The job dragond runs in, from its environment (`env`), with its node list
// expanded by `scontrol show hostnames`. Errors say what is missing: no
// SLURM_JOB_ID, no srun or scontrol in PATH, an unreadable node list.
absl::StatusOr<SlurmLauncherOptions> SlurmJobFromEnvironment(const EnvLookup& env);

// The options of the agents' srun step after its counts (--nodes, --ntasks,
// --ntasks-per-node, --cpus-per-task), also written into the job script of
// the login-node path (slurm_batch.h).
std::vector<std::string> SrunStepOptions();

class SlurmLauncher final : public Launcher {
 public:
  explicit SlurmLauncher(SlurmLauncherOptions options) : options_(std::move(options)) {}
  ~SlurmLauncher() override;

  std::string name() const override { return "slurm"; }
  absl::Status Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) override;
  std::vector<std::string> ExpectedNodes() const override { return options_.nodes; }
  void Stop(absl::Duration grace) override;

  // srun's argv, up to and including the agent's command line.
  static std::vector<std::string> SrunArgv(const SlurmLauncherOptions& options,
                                           const std::vector<std::string>& agent_argv);

 private:
  const SlurmLauncherOptions options_;
  CommandGroup group_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_SLURM_LAUNCHER_H_
