// Slurm from a login node (`dragond start --launcher slurm --nodes N --time T
// [--partition P] [--account A] [--sbatch-arg ARG]...`): the BatchSystem of
// BatchLauncher (batch_launcher.h). The job script, <run dir>/slurm-job.sh,
// asks for N whole nodes (--exclusive) for T and runs the agents with one
// srun step, as SlurmLauncher does inside a job; it is submitted with
// `sbatch --parsable --export=ALL [ARG...] slurm-job.sh` (options given with
// --sbatch-arg follow the script's #SBATCH lines and override them), with the
// run's token in sbatch's environment; the job's output goes to
// <run dir>/slurm-job.out. squeue -j ID --states=all says how it goes,
// scancel ends it.
#ifndef DRAGON_DAEMON_LAUNCHERS_SLURM_BATCH_H_
#define DRAGON_DAEMON_LAUNCHERS_SLURM_BATCH_H_

#include <string>
#include <vector>

#include "daemon/launchers/batch_launcher.h"

namespace dragon::daemon {

struct SlurmBatchOptions {
  int nodes = 1;
  std::string time;  // as the user gave it (checked by ParseSlurmTime)
  std::string partition;
  std::string account;
  std::vector<std::string> sbatch_args;
};

class SlurmBatch final : public BatchSystem {
 public:
  explicit SlurmBatch(SlurmBatchOptions options) : options_(std::move(options)) {}

  std::string name() const override { return "Slurm"; }
  std::string launcher() const override { return "slurm"; }
  std::string script_name() const override { return "slurm-job.sh"; }
  std::string output_name() const override { return "slurm-job.out"; }
  std::string Request() const override;
  std::string Script(const AgentLaunchSpec& spec) const override;
  absl::StatusOr<std::string> Submit(
      const std::string& script,
      const std::vector<std::pair<std::string, std::string>>& env) override;
  absl::StatusOr<JobStatus> Query(const std::string& job_id) override;
  absl::Status Cancel(const std::string& job_id) override;
  absl::StatusOr<std::vector<std::string>> Nodes(const JobStatus& running) override;
  std::vector<std::string> PartitionHosts() override;
  std::string Explain(const JobStatus& status) override;
  bool Settled(const JobStatus& status) const override;

  // sbatch's argv for `script`.
  std::vector<std::string> SbatchArgv(const std::string& script) const;

 private:
  const SlurmBatchOptions options_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_SLURM_BATCH_H_
