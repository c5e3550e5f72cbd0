// Starts the run's agents. One implementation per way of reaching nodes
// (local now; ssh, Slurm and PBS later), each in its own file here; every
// one builds the agent's command line and environment with BuildAgentCommand
// (agent_command.h), so that they differ only in how they reach nodes.
#ifndef DRAGON_DAEMON_LAUNCHERS_LAUNCHER_H_
#define DRAGON_DAEMON_LAUNCHERS_LAUNCHER_H_

#include <cstdint>
#include <functional>
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
  // The run's token: handed to the agent in its environment, never on its
  // command line (which every user on the node can read with ps).
  std::string token;
  std::string tls_ca;  // CA certificate file the agent verifies the head with; "" = plaintext
};

// What a launcher learns from the head about one of its agents.
struct AgentLoss {
  std::string node_id;
  int pid = 0;
  std::string reason;
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  virtual absl::Status Launch(const AgentLaunchSpec& spec) = 0;
  // The head declared an agent lost (heartbeats stopped, stream broke).
  // Called with the head's lock held: record it and return. A launcher that
  // can restart agents kills that one (it may be hung) and starts another.
  virtual void OnAgentLost(const AgentLoss& loss) {}
  // Waits up to `grace` for the agents to exit on their own (they were told
  // to), then kills what is left and reaps it.
  virtual void Stop(absl::Duration grace) = 0;
};

// Where a launcher reports that it could not (re)start an agent, for the
// errors of work that then fails for want of nodes.
using LaunchProblemSink = std::function<void(const std::string& problem)>;

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_LAUNCHER_H_
