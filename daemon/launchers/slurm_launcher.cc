#include "daemon/launchers/slurm_launcher.h"

#include <signal.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/launchers/agent_command.h"
#include "daemon/launchers/slurm_tools.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {
namespace {

constexpr char kStepName[] = "dragon-agents";

// scancel of the agents' step, found by its name among the job's steps.
void CancelStep(const std::string& job_id) {
  absl::StatusOr<CommandResult> steps =
      RunCommand({"squeue", "-h", "-s", "-j", job_id, "-o", "%i|%j"}, {}, absl::Seconds(10));
  if (!steps.ok() || steps->exit_code != 0) return;
  for (absl::string_view line : absl::StrSplit(steps->out, '\n', absl::SkipWhitespace())) {
    std::vector<std::string> parts = absl::StrSplit(line, '|');
    if (parts.size() != 2 || parts[1] != kStepName) continue;
    absl::StatusOr<CommandResult> r = RunCommand({"scancel", parts[0]}, {}, absl::Seconds(10));
    spdlog::warn("scancel {}: {}", parts[0],
                 r.ok() ? absl::StrCat("exit ", r->exit_code, " ", r->err)
                        : std::string(r.status().message()));
  }
}

}  // namespace

absl::StatusOr<SlurmLauncherOptions> SlurmJobFromEnvironment(const EnvLookup& env) {
  SlurmLauncherOptions options;
  options.job_id = env("SLURM_JOB_ID");
  if (options.job_id.empty()) {
    return absl::FailedPreconditionError(
        "--launcher slurm without --nodes starts agents inside a Slurm job, but SLURM_JOB_ID is "
        "not set here: run dragond start in a job (sbatch, salloc), or give --nodes N --time T "
        "to submit one");
  }
  const std::vector<std::string> missing = MissingPrograms({"srun", "scontrol"}, env("PATH"));
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "inside Slurm job ", options.job_id, " the slurm launcher needs Slurm's srun and "
        "scontrol, but ", absl::StrJoin(missing, " and "), " is not in PATH (", env("PATH"), ")"));
  }
  std::string nodelist = env("SLURM_JOB_NODELIST");
  if (nodelist.empty()) nodelist = env("SLURM_NODELIST");
  if (nodelist.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Slurm job ", options.job_id, ": SLURM_JOB_NODELIST is not set, so its nodes are unknown"));
  }
  absl::StatusOr<CommandResult> r =
      RunCommand({"scontrol", "show", "hostnames", nodelist}, {}, absl::Seconds(30));
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::UnavailableError(absl::StrCat("scontrol show hostnames ", nodelist, " exited ",
                                               r->exit_code, ": ", r->err));
  }
  absl::StatusOr<std::vector<std::string>> nodes = ParseHostnames(r->out);
  if (!nodes.ok()) return nodes.status();
  options.nodes = *std::move(nodes);
  options.cpus_per_task = MinCpusPerNode(env("SLURM_JOB_CPUS_PER_NODE"));
  if (options.cpus_per_task == 0) options.cpus_per_task = MinCpusPerNode(env("SLURM_CPUS_ON_NODE"));
  return options;
}

std::vector<std::string> SrunStepOptions() {
  return {"--kill-on-bad-exit=0", "--overlap",
          "--mpi=none",           "--export=ALL",
          "--label",              absl::StrCat("--job-name=", kStepName)};
}

SlurmLauncher::~SlurmLauncher() { Stop(absl::Seconds(2)); }

std::vector<std::string> SlurmLauncher::SrunArgv(const SlurmLauncherOptions& options,
                                                 const std::vector<std::string>& agent_argv) {
  const size_t n = options.nodes.size();
  std::vector<std::string> argv = {"srun",
                                   absl::StrCat("--nodes=", n),
                                   absl::StrCat("--ntasks=", n),
                                   "--ntasks-per-node=1"};
  if (options.cpus_per_task > 0) {
    argv.push_back(absl::StrCat("--cpus-per-task=", options.cpus_per_task));
  }
  for (const std::string& option : SrunStepOptions()) argv.push_back(option);
  argv.insert(argv.end(), agent_argv.begin(), agent_argv.end());
  return argv;
}

absl::Status SlurmLauncher::Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) {
  const AgentCommand agent = BuildAgentCommand(spec, "");
  GroupCommand step;
  step.label = absl::StrCat("the srun step of the agents (Slurm job ", options_.job_id, ")");
  step.child.argv = SrunArgv(options_, agent.argv);
  step.child.env = agent.env;  // the token: srun hands its environment to the tasks
  step.child.log_path = absl::StrCat(spec.run_dir, "/srun-agents.log");
  step.nodes = options_.nodes;
  if (observer != nullptr) {
    observer->Progress(absl::StrCat("Slurm job ", options_.job_id, ": starting ",
                                    options_.nodes.size(), " agent(s) with one srun step on ",
                                    absl::StrJoin(options_.nodes, ", ")));
  }
  std::vector<GroupCommand> commands;
  commands.push_back(std::move(step));
  return group_.Start(std::move(commands), observer);
}

void SlurmLauncher::Stop(absl::Duration grace) {
  const std::string job_id = options_.job_id;
  group_.Stop(grace, [job_id](const GroupCommand& command, ChildProcess* srun) {
    // srun cancels its step on SIGTERM; once more in case the first was lost.
    for (int i = 0; i < 2; ++i) {
      srun->Signal(SIGTERM);
      if (srun->WaitFor(absl::Seconds(4))) return;
    }
    spdlog::warn("{} did not end after SIGTERM twice: scancel of its step, then SIGKILL",
                 command.label);
    CancelStep(job_id);
    if (!srun->WaitFor(absl::Seconds(4))) srun->Terminate(absl::ZeroDuration());
  });
}

}  // namespace dragon::daemon
