#include "daemon/launchers/pbs_launcher.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/token.h"
#include "daemon/launchers/agent_command.h"
#include "daemon/launchers/host_list.h"
#include "daemon/launchers/slurm_tools.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {
namespace {

// pbsdsh and mpiexec do not hand dragond's environment to the agents: the
// token comes from the run's token file (0600, on the shared filesystem).
std::vector<std::string> WithTokenFile(std::vector<std::string> argv, const AgentLaunchSpec& spec) {
  if (!spec.token.empty()) {
    argv.push_back(absl::StrCat("--token-file=", spec.run_dir, "/", common::kTokenFileName));
  }
  return argv;
}

}  // namespace

absl::StatusOr<PbsLauncherOptions> PbsJobFromEnvironment(const EnvLookup& env,
                                                         const std::string& exec,
                                                         std::vector<std::string> ssh_command) {
  PbsLauncherOptions options;
  options.job_id = env("PBS_JOBID");
  const std::string nodefile = env("PBS_NODEFILE");
  if (options.job_id.empty() || nodefile.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--launcher pbs without --nodes starts agents inside a PBS job, but ",
        options.job_id.empty() ? "PBS_JOBID" : "PBS_NODEFILE",
        " is not set here: run dragond start in a job (qsub), or give --nodes N --time T to "
        "submit one"));
  }
  if (exec != "ssh" && exec != "pbsdsh" && exec != "mpiexec") {
    return absl::InvalidArgumentError(
        absl::StrCat("--pbs-exec '", exec, "' is not one of ", kPbsExecKinds));
  }
  if (exec == "ssh" && ssh_command.empty()) {
    return absl::InvalidArgumentError("--ssh-command is empty");
  }
  const std::string program = exec == "ssh" ? ssh_command[0] : exec;
  if (!MissingPrograms({program}, env("PATH")).empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--pbs-exec ", exec, " needs ", program, ", which is not in PATH (", env("PATH"), ")"));
  }
  absl::StatusOr<std::vector<std::string>> hosts = ReadHostFile(nodefile);
  if (!hosts.ok()) {
    return absl::Status(hosts.status().code(),
                        absl::StrCat("PBS_NODEFILE: ", hosts.status().message()));
  }
  options.hosts = *std::move(hosts);
  options.exec = exec;
  options.ssh_command = std::move(ssh_command);
  return options;
}

PbsLauncher::PbsLauncher(PbsLauncherOptions options) : options_(std::move(options)) {
  if (options_.exec == "ssh") {
    SshLauncherOptions ssh;
    ssh.hosts = options_.hosts;
    ssh.ssh_command = options_.ssh_command;
    ssh_ = std::make_unique<SshLauncher>(ssh);
  }
}

PbsLauncher::~PbsLauncher() { Stop(absl::Seconds(2)); }

std::vector<GroupCommand> PbsLauncher::Commands(const PbsLauncherOptions& options,
                                                const AgentLaunchSpec& spec) {
  std::vector<GroupCommand> commands;
  if (options.exec == "pbsdsh") {
    for (const std::string& host : options.hosts) {
      GroupCommand c;
      c.label = absl::StrCat("pbsdsh to ", host);
      c.child.argv = {"pbsdsh", "-h", host};
      for (std::string& arg : WithTokenFile(BuildAgentCommand(spec, host).argv, spec)) {
        c.child.argv.push_back(std::move(arg));
      }
      c.child.log_path = absl::StrCat(spec.run_dir, "/pbsdsh-", host, ".log");
      c.nodes = {host};
      commands.push_back(std::move(c));
    }
  } else if (options.exec == "mpiexec") {
    GroupCommand c;
    c.label = "the mpiexec of the agents";
    c.child.argv = {"mpiexec", "-n", absl::StrCat(options.hosts.size()), "--ppn", "1", "--hosts",
                    absl::StrJoin(options.hosts, ",")};
    for (std::string& arg : WithTokenFile(BuildAgentCommand(spec, "").argv, spec)) {
      c.child.argv.push_back(std::move(arg));
    }
    c.child.log_path = absl::StrCat(spec.run_dir, "/mpiexec-agents.log");
    c.nodes = options.hosts;
    commands.push_back(std::move(c));
  }
  return commands;
}

absl::Status PbsLauncher::Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) {
  if (observer != nullptr) {
    observer->Progress(absl::StrCat("PBS job ", options_.job_id, ": starting ",
                                    options_.hosts.size(), " agent(s) with ", options_.exec,
                                    " on ", absl::StrJoin(options_.hosts, ", ")));
  }
  if (ssh_ != nullptr) return ssh_->Launch(spec, observer);
  return group_.Start(Commands(options_, spec), observer);
}

absl::Status PbsLauncher::AddNodes(const std::vector<std::string>& hosts) {
  if (ssh_ != nullptr) return ssh_->AddNodes(hosts);
  return absl::UnimplementedError(
      "the pbs launcher adds nodes only with --pbs-exec ssh (a job's own nodes are fixed)");
}

void PbsLauncher::Stop(absl::Duration grace) {
  if (ssh_ != nullptr) {
    ssh_->Stop(grace);
  } else {
    group_.Stop(grace);
  }
}

}  // namespace dragon::daemon
