#include "daemon/launchers/agent_command.h"

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/token.h"

namespace dragon::daemon {

AgentCommand BuildAgentCommand(const AgentLaunchSpec& spec, const std::string& node_id) {
  AgentCommand cmd;
  cmd.argv = {spec.agent_binary, absl::StrCat("--head=", spec.head_address)};
  if (!node_id.empty()) cmd.argv.push_back(absl::StrCat("--node-id=", node_id));
  cmd.argv.insert(cmd.argv.end(), {absl::StrCat("--run-dir=", spec.run_dir),
                                   absl::StrCat("--workers=", spec.workers_per_node),
                                   absl::StrCat("--log-level=", spec.log_level)});
  if (spec.shm_pool_mb >= 0) cmd.argv.push_back(absl::StrCat("--shm-pool-mb=", spec.shm_pool_mb));
  if (!spec.python.empty()) cmd.argv.push_back(absl::StrCat("--python=", spec.python));
  if (!spec.tls_ca.empty()) cmd.argv.push_back(absl::StrCat("--tls-ca=", spec.tls_ca));
  if (!spec.token.empty()) cmd.env.emplace_back(common::kTokenEnv, spec.token);
  if (!node_id.empty()) cmd.log_path = absl::StrCat(spec.run_dir, "/agent-", node_id, ".log");
  return cmd;
}

std::vector<std::string> MergeEnvironment(
    char** base, const std::vector<std::pair<std::string, std::string>>& env) {
  std::set<std::string> replaced;
  for (const auto& [name, value] : env) replaced.insert(name);
  std::vector<std::string> out;
  for (char** e = base; e != nullptr && *e != nullptr; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq != nullptr && replaced.count(std::string(*e, eq - *e)) > 0) continue;
    out.emplace_back(*e);
  }
  for (const auto& [name, value] : env) out.push_back(absl::StrCat(name, "=", value));
  return out;
}

}  // namespace dragon::daemon
