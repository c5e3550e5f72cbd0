// The one builder of a dragon-agent's command line and environment, shared
// by every launcher: the token goes into the environment, never into argv.
#ifndef DRAGON_DAEMON_LAUNCHERS_AGENT_COMMAND_H_
#define DRAGON_DAEMON_LAUNCHERS_AGENT_COMMAND_H_

#include <string>
#include <utility>
#include <vector>

#include "daemon/launchers/launcher.h"

namespace dragon::daemon {

struct AgentCommand {
  std::vector<std::string> argv;
  // Variables to set in the agent's environment (on top of the launcher's).
  std::vector<std::pair<std::string, std::string>> env;
  std::string log_path;  // where the agent's stdout/stderr should go
};

// `node_id` "": no --node-id (the agent takes its host name: one command
// starting the agents of many nodes, as srun does), and no log_path.
AgentCommand BuildAgentCommand(const AgentLaunchSpec& spec, const std::string& node_id);

// `base` (e.g. environ) with `env` set on top, as NAME=VALUE strings.
std::vector<std::string> MergeEnvironment(char** base,
                                          const std::vector<std::pair<std::string, std::string>>& env);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_AGENT_COMMAND_H_
