// Starts the run's agents. One implementation per way of reaching nodes
// (local now; ssh, Slurm and PBS later), chosen by `dragond start --launcher`.
#ifndef DRAGON_DAEMON_LAUNCHER_H_
#define DRAGON_DAEMON_LAUNCHER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace dragon::daemon {

struct AgentLaunchSpec {
  std::string agent_binary;
  std::string head_address;  // as the agents must dial it
  std::string run_dir;
  std::string python;        // interpreter for the workers ("" = agent default)
  int workers_per_node = 0;  // 0 = one per core
  std::string log_level;
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  virtual absl::Status Launch(const AgentLaunchSpec& spec) = 0;
  // Waits up to `grace` for the agents to exit on their own (they were told
  // to), then kills what is left and reaps it.
  virtual void Stop(absl::Duration grace) = 0;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHER_H_
