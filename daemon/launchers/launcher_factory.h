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
};

// The environment as the factory reads it (tests pass their own).
using EnvLookup = std::function<std::string(const char* name)>;
EnvLookup ProcessEnv();

// "auto" resolved against the environment; other kinds are returned as given.
std::string ResolveLauncherKind(const std::string& kind, const EnvLookup& env);

// nullptr for "none" (agents are started by someone else). Errors name the
// option that is wrong (unknown launcher, a malformed or empty host list, a
// launcher whose requirements are missing).
absl::StatusOr<std::unique_ptr<Launcher>> MakeLauncher(const LauncherConfig& config,
                                                       const EnvLookup& env);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_LAUNCHER_FACTORY_H_
