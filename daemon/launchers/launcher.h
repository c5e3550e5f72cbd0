// Starts the run's agents. One implementation per way of reaching nodes
// (local, ssh, slurm, pbs), each in its own file here, picked by
// MakeLauncher (launcher_factory.h); every one builds the agent's command
// line and environment with BuildAgentCommand (agent_command.h), so that they
// differ only in how they reach nodes.
#ifndef DRAGON_DAEMON_LAUNCHERS_LAUNCHER_H_
#define DRAGON_DAEMON_LAUNCHERS_LAUNCHER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace dragon::daemon {

struct AgentLaunchSpec {
  std::string agent_binary;
  std::string head_address;  // as the agents must dial it
  std::string run_dir;
  std::string python;        // interpreter for the workers ("" = agent default)
  int workers_per_node = 0;  // 0 = one per core
  int shm_pool_mb = -1;      // dragon-agent --shm-pool-mb; -1 = the agent's default
  std::string log_level;
  // The run's token: handed to the agent in its environment (or on the stdin
  // of a remote shell), never on its command line, which every user on the
  // node can read with ps.
  std::string token;
  std::string tls_ca;  // CA certificate file the agent verifies the head with; "" = plaintext
  // Variables of dragond's environment an agent started elsewhere gets too
  // (dragond start --agent-env), e.g. PYTHONPATH.
  std::vector<std::pair<std::string, std::string>> forwarded_env;
  // Why dragond is stopping ("" while it is not): a launcher that waits in
  // Launch (for a batch job to start) polls it and gives up when it is set.
  std::function<std::string()> stop_requested;
};

// The environment as launchers read it (tests pass their own).
using EnvLookup = std::function<std::string(const char* name)>;

// What a launcher learns from the head about one of its agents.
struct AgentLoss {
  std::string node_id;
  int pid = 0;
  std::string reason;
};

// Where a launcher says how starting agents goes. Thread-safe.
class LaunchObserver {
 public:
  virtual ~LaunchObserver() = default;
  // For people, while they wait ("job 42: PENDING (Resources)").
  virtual void Progress(const std::string& message) = 0;
  // An agent could not be started on `node` (its ssh failed, its step ended...).
  virtual void NodeFailed(const std::string& node, const std::string& why) = 0;
  // The launcher could not (re)start agents: added to the errors of work
  // that then fails for want of nodes.
  virtual void Problem(const std::string& problem) { (void)problem; }
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  virtual std::string name() const = 0;
  // Starts the agents and returns once they are started (not registered).
  // Failures of single nodes come later through `observer`, which must
  // outlive the launcher. A launcher that submits a batch job returns once
  // the job runs (saying how the wait goes through observer->Progress), or
  // with an error naming the job's state when it fails, is cancelled, or
  // does not start in time (it cancels it then).
  virtual absl::Status Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) = 0;
  // The node ids whose agents the head should wait for. A launcher that
  // submits a batch job knows them only once Launch returned (the job runs).
  virtual std::vector<std::string> ExpectedNodes() const = 0;
  // Hosts where agents will run, or near them, asked before Launch to pick
  // the address agents can reach the head at (--listen's default).
  virtual std::vector<std::string> ListenPeers() const { return ExpectedNodes(); }
  // The head declared an agent lost (heartbeats stopped, stream broke).
  // Called with the head's lock held: record it and return. A launcher that
  // can restart agents kills that one (it may be hung) and starts another.
  virtual void OnAgentLost(const AgentLoss& loss) { (void)loss; }
  // Starts agents on more hosts of a running head (dragonctl nodes add).
  virtual absl::Status AddNodes(const std::vector<std::string>& hosts) {
    (void)hosts;
    return absl::UnimplementedError(CannotAddNodes());
  }
  // Waits up to `grace` for the agents to exit on their own (the head told
  // them to), then ends what is left, here and on remote nodes, and
  // whatever it created (srun steps, batch jobs). No restart after this.
  virtual void Stop(absl::Duration grace) = 0;

 protected:
  std::string CannotAddNodes() const {
    return "the " + name() + " launcher cannot add nodes to a running head (the ssh launcher can)";
  }
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_LAUNCHER_H_
