#include "agent/mpi_command_line.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace dragon::agent {

uint32_t RanksPerNode(const v1::MpiPlacement& placement) {
  if (placement.ranks_per_node() > 0) return placement.ranks_per_node();
  const uint32_t hosts = std::max(1, placement.hosts_size());
  return std::max<uint32_t>(1, (placement.ranks() + hosts - 1) / hosts);
}

std::vector<std::string> RankHosts(const v1::MpiPlacement& placement) {
  std::vector<std::string> out;
  if (placement.hosts_size() == 0) return std::vector<std::string>(placement.ranks());
  const uint32_t ppn = RanksPerNode(placement);
  for (uint32_t r = 0; r < placement.ranks(); ++r) {
    out.push_back(placement.hosts(static_cast<int>((r / ppn) % placement.hosts_size())));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> MpiLaunchPrefix(const MpiLauncherConfig& config,
                                                         const v1::MpiPlacement& placement,
                                                         const std::string& hostfile) {
  if (placement.ranks() == 0) return absl::InvalidArgumentError("an MPI placement of 0 ranks");
  const std::string hosts = absl::StrJoin(placement.hosts(), ",");
  const uint32_t ppn = RanksPerNode(placement);
  std::vector<std::string> argv;
  switch (config.kind) {
    case MpiLauncherKind::kHydra:
      argv = {config.mpiexec, "-n", absl::StrCat(placement.ranks()), "-ppn", absl::StrCat(ppn)};
      if (!hosts.empty()) argv.insert(argv.end(), {"-hosts", hosts});
      if (!config.launcher_exec.empty()) {
        argv.insert(argv.end(), {"-launcher-exec", config.launcher_exec});
      }
      break;
    case MpiLauncherKind::kSrun:
      argv = {config.srun, absl::StrCat("--ntasks=", placement.ranks()),
              absl::StrCat("--ntasks-per-node=", ppn), "--distribution=block",
              "--kill-on-bad-exit=1"};
      if (!hosts.empty()) {
        argv.push_back(absl::StrCat("--nodes=", placement.hosts_size()));
        argv.push_back(absl::StrCat("--nodelist=", hosts));
      }
      break;
    case MpiLauncherKind::kCommand:
      for (const std::string& word : config.command) {
        if (word.find("{hostfile}") != std::string::npos && hostfile.empty()) {
          return absl::InvalidArgumentError(
              "the MPI launcher's command line uses {hostfile}, which is not available here");
        }
        argv.push_back(absl::StrReplaceAll(
            word, {{"{ranks}", absl::StrCat(placement.ranks())},
                   {"{ranks_per_node}", absl::StrCat(ppn)},
                   {"{nodes}", absl::StrCat(std::max(1, placement.hosts_size()))},
                   {"{hosts}", hosts},
                   {"{hostfile}", hostfile}}));
      }
      break;
  }
  return argv;
}

absl::StatusOr<std::vector<std::string>> MpiJobArgv(const MpiLauncherConfig& config,
                                                    const v1::MpiPlacement& placement,
                                                    const std::string& dir, const std::string& tag,
                                                    const std::vector<std::string>& program) {
  if (program.empty() || program[0].empty()) return absl::InvalidArgumentError("an empty program");
  absl::StatusOr<std::vector<std::string>> argv =
      MpiLaunchPrefix(config, placement, absl::StrCat(dir, "/hostfile"));
  if (!argv.ok()) return argv.status();
  switch (config.kind) {
    case MpiLauncherKind::kHydra:
      argv->insert(argv->end(), {"-outfile-pattern", absl::StrCat(dir, "/rank-%r.out"),
                                 "-errfile-pattern", absl::StrCat(dir, "/rank-%r.err")});
      break;
    case MpiLauncherKind::kSrun:
      argv->insert(argv->end(), {absl::StrCat("--output=", dir, "/rank-%t.out"),
                                 absl::StrCat("--error=", dir, "/rank-%t.err"), "--input=0"});
      break;
    case MpiLauncherKind::kCommand:
      break;
  }
  if (!placement.launcher_options().empty()) {
    absl::StatusOr<std::vector<std::string>> options =
        SplitCommandLine(placement.launcher_options());
    if (!options.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("launcher_options: ", options.status().message()));
    }
    argv->insert(argv->end(), options->begin(), options->end());
  }
  if (!config.rank_wrapper.empty()) {
    argv->insert(argv->end(), {config.rank_wrapper, absl::StrCat("--tag=", tag), "--"});
  }
  argv->insert(argv->end(), program.begin(), program.end());
  return argv;
}

}  // namespace dragon::agent
