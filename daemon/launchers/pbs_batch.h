// PBS from a login node (`dragond start --launcher pbs --nodes N --time T
// [--queue Q] [--account A] [--qsub-arg ARG]...`): the BatchSystem of
// BatchLauncher (batch_launcher.h). The job script, <run dir>/pbs-job.sh,
//
//   #!/bin/bash
//   #PBS -N dragon-agents
//   #PBS -l nodes=N,walltime=HH:MM:SS
//   #PBS -q Q / #PBS -A A
//   exec dragond agents --head=ADDR --run-dir=RUN --pbs-exec=X ...
//
// runs `dragond agents` (job_agents.h) on the job's first node, which starts
// one agent on every node of the job with the launcher of a job: inside a
// real PBS job the pbs launcher (PBS_NODEFILE, --pbs-exec), inside a job of
// Slurm's qsub wrapper (slurm-wlm-torque: no PBS_NODEFILE, SLURM_JOB_ID set)
// the slurm launcher (one srun step). It is submitted with `qsub -V -N
// dragon-agents -j oe -o RUN/pbs-job.out [-q Q] [-A A] [ARG...] pbs-job.sh`:
// -V hands qsub's environment, the run's token with it, to the job (never
// -v NAME=VALUE, which Slurm's wrapper puts on sbatch's command line).
// qstat -f ID says how it goes (job_state, exec_host, comment), qdel ends it.
#ifndef DRAGON_DAEMON_LAUNCHERS_PBS_BATCH_H_
#define DRAGON_DAEMON_LAUNCHERS_PBS_BATCH_H_

#include <string>
#include <vector>

#include "daemon/launchers/batch_launcher.h"

namespace dragon::daemon {

struct PbsBatchOptions {
  int nodes = 1;
  absl::Duration walltime = absl::Minutes(10);
  std::string queue;
  std::string account;
  std::vector<std::string> qsub_args;
  std::string pbs_exec = "ssh";           // how `dragond agents` starts them in a real PBS job
  std::string dragond_binary;             // this dragond (same path on every node)
};

class PbsBatch final : public BatchSystem {
 public:
  explicit PbsBatch(PbsBatchOptions options) : options_(std::move(options)) {}

  std::string name() const override { return "PBS"; }
  std::string launcher() const override { return "pbs"; }
  std::string script_name() const override { return "pbs-job.sh"; }
  std::string output_name() const override { return "pbs-job.out"; }
  std::string Request() const override;
  std::string Script(const AgentLaunchSpec& spec) const override;
  absl::StatusOr<std::string> Submit(
      const std::string& script,
      const std::vector<std::pair<std::string, std::string>>& env) override;
  absl::StatusOr<JobStatus> Query(const std::string& job_id) override;
  absl::Status Cancel(const std::string& job_id) override;
  absl::StatusOr<std::vector<std::string>> Nodes(const JobStatus& running) override;
  std::vector<std::string> PartitionHosts() override;
  bool Settled(const JobStatus& status) const override;

  std::vector<std::string> QsubArgv(const std::string& script, const std::string& run_dir) const;

 private:
  const PbsBatchOptions options_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_PBS_BATCH_H_
