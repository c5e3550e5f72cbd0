#include "daemon/launchers/launcher_factory.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_join.h"
#include "daemon/launchers/batch_launcher.h"
#include "daemon/launchers/host_list.h"
#include "daemon/launchers/local_launcher.h"
#include "daemon/launchers/pbs_batch.h"
#include "daemon/launchers/pbs_launcher.h"
#include "daemon/launchers/slurm_batch.h"
#include "daemon/launchers/slurm_launcher.h"
#include "daemon/launchers/slurm_tools.h"
#include "daemon/launchers/ssh_launcher.h"

namespace dragon::daemon {

EnvLookup ProcessEnv() {
  return [](const char* name) {
    const char* value = std::getenv(name);
    return value == nullptr ? std::string() : std::string(value);
  };
}

std::string ResolveLauncherKind(const std::string& kind, const EnvLookup& env) {
  if (kind != "auto") return kind;
  if (!env("SLURM_JOB_ID").empty()) return "slurm";
  if (!env("PBS_JOBID").empty() && !env("PBS_NODEFILE").empty()) return "pbs";
  return "local";
}

namespace {

std::vector<std::string> SplitCommand(const std::string& command) {
  return absl::StrSplit(command, ' ', absl::SkipWhitespace());
}

// slurm and pbs: submit a job from a login node (--nodes, --time), or start
// the agents of the job dragond runs in.
absl::StatusOr<std::unique_ptr<Launcher>> MakeBatchLauncher(const std::string& kind,
                                                            const LauncherConfig& config,
                                                            const EnvLookup& env) {
  const bool slurm = kind == "slurm";
  if (slurm && (!config.queue.empty() || !config.qsub_args.empty())) {
    return absl::InvalidArgumentError(absl::StrCat(
        !config.queue.empty() ? "--queue" : "--qsub-arg",
        " is an option of --launcher pbs; with slurm use --partition and --sbatch-arg"));
  }
  if (!slurm && (!config.partition.empty() || !config.sbatch_args.empty())) {
    return absl::InvalidArgumentError(absl::StrCat(
        !config.partition.empty() ? "--partition" : "--sbatch-arg",
        " is an option of --launcher slurm; with pbs use --queue and --qsub-arg"));
  }
  const bool submit = config.nodes > 0 || !config.time.empty() || !config.partition.empty() ||
                      !config.queue.empty() || !config.account.empty() ||
                      !config.sbatch_args.empty() || !config.qsub_args.empty();
  if (!submit) {
    if (slurm) {
      absl::StatusOr<SlurmLauncherOptions> job = SlurmJobFromEnvironment(env);
      if (!job.ok()) return job.status();
      return std::unique_ptr<Launcher>(std::make_unique<SlurmLauncher>(*std::move(job)));
    }
    absl::StatusOr<PbsLauncherOptions> job =
        PbsJobFromEnvironment(env, config.pbs_exec, SplitCommand(config.ssh_command));
    if (!job.ok()) return job.status();
    return std::unique_ptr<Launcher>(std::make_unique<PbsLauncher>(*std::move(job)));
  }
  // From a login node: a job of its own.
  const std::string how = absl::StrCat("--launcher ", kind, " submitting a job");
  if (config.nodes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(how, " needs --nodes N (at least 1): how many nodes to ask for"));
  }
  if (config.time.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        how, " needs --time T: the job's walltime (MINUTES, HOURS:MINUTES:SECONDS, "
             "DAYS-HOURS, ...)"));
  }
  absl::StatusOr<absl::Duration> walltime = ParseSlurmTime(config.time, "--time");
  if (!walltime.ok()) return walltime.status();
  const std::vector<std::string> tools =
      slurm ? std::vector<std::string>{"sbatch", "squeue", "scancel", "scontrol", "sinfo"}
            : std::vector<std::string>{"qsub", "qstat", "qdel"};
  if (std::vector<std::string> missing = MissingPrograms(tools, env("PATH")); !missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        how, " needs ", slurm ? "Slurm's" : "PBS's", " commands (", absl::StrJoin(tools, ", "),
        "), but ", absl::StrJoin(missing, ", "), " ", missing.size() == 1 ? "is" : "are",
        " not in PATH (", env("PATH"), ")"));
  }
  BatchLauncherOptions options;
  options.start_timeout = absl::Seconds(config.start_timeout_s);
  if (slurm) {
    SlurmBatchOptions job;
    job.nodes = config.nodes;
    job.time = config.time;
    job.partition = config.partition;
    job.account = config.account;
    job.sbatch_args = config.sbatch_args;
    return std::unique_ptr<Launcher>(
        std::make_unique<BatchLauncher>(std::make_unique<SlurmBatch>(job), options));
  }
  if (config.pbs_exec != "ssh" && config.pbs_exec != "pbsdsh" && config.pbs_exec != "mpiexec") {
    return absl::InvalidArgumentError(
        absl::StrCat("--pbs-exec '", config.pbs_exec, "' is not one of ", kPbsExecKinds));
  }
  if (config.dragond_binary.empty()) {
    return absl::InternalError("the pbs launcher needs the path of dragond for its job script");
  }
  PbsBatchOptions job;
  job.nodes = config.nodes;
  job.walltime = *walltime;
  job.queue = config.queue;
  job.account = config.account;
  job.qsub_args = config.qsub_args;
  job.pbs_exec = config.pbs_exec;
  job.dragond_binary = config.dragond_binary;
  return std::unique_ptr<Launcher>(
      std::make_unique<BatchLauncher>(std::make_unique<PbsBatch>(job), options));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Launcher>> MakeLauncher(const LauncherConfig& config,
                                                       const EnvLookup& env) {
  const std::string kind = ResolveLauncherKind(config.kind, env);
  const bool batch_options = config.nodes != 0 || !config.time.empty() ||
                             !config.partition.empty() || !config.queue.empty() ||
                             !config.account.empty() || !config.sbatch_args.empty() ||
                             !config.qsub_args.empty();
  if (batch_options && kind != "slurm" && kind != "pbs") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--nodes, --time, --partition, --queue, --account, --sbatch-arg and --qsub-arg are "
        "options of --launcher slurm or pbs (submitting a job from a login node), not of '",
        kind, "'"));
  }
  const bool has_hosts = !config.hosts.empty() || !config.hostfile.empty();
  if (has_hosts && kind != "ssh") {
    return absl::InvalidArgumentError(
        absl::StrCat("--hosts and --hostfile are options of --launcher ssh, not of '", kind, "'"));
  }
  if (kind == "none") return std::unique_ptr<Launcher>();
  if (kind == "local") {
    LocalLauncherOptions options;
    options.node_id = config.local_node_id;
    options.max_restarts = config.agent_restarts;
    return std::unique_ptr<Launcher>(std::make_unique<LocalLauncher>(options));
  }
  if (kind == "ssh") {
    SshLauncherOptions options;
    if (!config.hosts.empty() && !config.hostfile.empty()) {
      return absl::InvalidArgumentError("give --hosts or --hostfile, not both");
    }
    absl::StatusOr<std::vector<std::string>> hosts =
        !config.hosts.empty() ? ParseHostList(config.hosts, "--hosts")
        : !config.hostfile.empty()
            ? ReadHostFile(config.hostfile)
            : absl::InvalidArgumentError("--launcher ssh needs --hosts h1,h2,... or --hostfile FILE");
    if (!hosts.ok()) return hosts.status();
    options.hosts = *std::move(hosts);
    options.ssh_command = SplitCommand(config.ssh_command);
    if (options.ssh_command.empty()) {
      return absl::InvalidArgumentError("--ssh-command is empty");
    }
    return std::unique_ptr<Launcher>(std::make_unique<SshLauncher>(options));
  }
  if (kind == "slurm" || kind == "pbs") return MakeBatchLauncher(kind, config, env);
  return absl::InvalidArgumentError(
      absl::StrCat("--launcher '", kind, "' is not one of ", kLauncherKinds));
}

}  // namespace dragon::daemon
