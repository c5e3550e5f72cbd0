#include "daemon/launchers/launcher_factory.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "daemon/launchers/host_list.h"
#include "daemon/launchers/local_launcher.h"
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

absl::StatusOr<std::unique_ptr<Launcher>> MakeLauncher(const LauncherConfig& config,
                                                       const EnvLookup& env) {
  const std::string kind = ResolveLauncherKind(config.kind, env);
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
    options.ssh_command = absl::StrSplit(config.ssh_command, ' ', absl::SkipWhitespace());
    if (options.ssh_command.empty()) {
      return absl::InvalidArgumentError("--ssh-command is empty");
    }
    return std::unique_ptr<Launcher>(std::make_unique<SshLauncher>(options));
  }
  if (kind == "slurm" || kind == "pbs") {
    return absl::UnimplementedError(absl::StrCat("the ", kind, " launcher is not built yet"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--launcher '", kind, "' is not one of ", kLauncherKinds));
}

}  // namespace dragon::daemon
