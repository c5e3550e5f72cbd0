#include "daemon/launchers/agent_command.h"

#include <catch2/catch.hpp>

#include "absl/strings/match.h"

namespace dragon::daemon {
namespace {

AgentLaunchSpec Spec() {
  AgentLaunchSpec spec;
  spec.agent_binary = "/bin/dragon-agent";
  spec.head_address = "10.0.0.1:4000";
  spec.run_dir = "/runs/r1";
  spec.workers_per_node = 4;
  spec.log_level = "info";
  spec.token = "0123456789abcdef0123456789abcdef";
  return spec;
}

TEST_CASE("the token goes to the environment, never to the command line") {
  AgentCommand cmd = BuildAgentCommand(Spec(), "n7");
  for (const std::string& arg : cmd.argv) {
    CHECK_FALSE(absl::StrContains(arg, "0123456789abcdef"));
  }
  REQUIRE(cmd.env.size() == 1);
  CHECK(cmd.env[0].first == "DRAGON_TOKEN");
  CHECK(cmd.env[0].second == Spec().token);
  CHECK(cmd.argv[0] == "/bin/dragon-agent");
  CHECK(cmd.argv[1] == "--head=10.0.0.1:4000");
  CHECK(cmd.argv[2] == "--node-id=n7");
  CHECK(cmd.log_path == "/runs/r1/agent-n7.log");
}

TEST_CASE("optional flags appear only when set") {
  AgentLaunchSpec spec = Spec();
  spec.token.clear();
  AgentCommand plain = BuildAgentCommand(spec, "n1");
  CHECK(plain.env.empty());
  for (const std::string& arg : plain.argv) {
    CHECK_FALSE(absl::StartsWith(arg, "--python"));
    CHECK_FALSE(absl::StartsWith(arg, "--tls-ca"));
    CHECK_FALSE(absl::StartsWith(arg, "--shm-pool-mb"));  // -1: the agent's own default
  }
  spec.shm_pool_mb = 0;
  AgentCommand no_pool = BuildAgentCommand(spec, "n1");
  CHECK(std::find(no_pool.argv.begin(), no_pool.argv.end(), "--shm-pool-mb=0") != no_pool.argv.end());
  spec.python = "/usr/bin/python3";
  spec.tls_ca = "/etc/ca.pem";
  AgentCommand full = BuildAgentCommand(spec, "n1");
  CHECK(std::find(full.argv.begin(), full.argv.end(), "--python=/usr/bin/python3") != full.argv.end());
  CHECK(std::find(full.argv.begin(), full.argv.end(), "--tls-ca=/etc/ca.pem") != full.argv.end());
}

TEST_CASE("no node id: the agent takes its host name (one srun for every node)") {
  AgentCommand cmd = BuildAgentCommand(Spec(), "");
  for (const std::string& arg : cmd.argv) CHECK_FALSE(absl::StartsWith(arg, "--node-id"));
  CHECK(cmd.argv[2] == "--run-dir=/runs/r1");
  CHECK(cmd.log_path.empty());
}

TEST_CASE("MergeEnvironment replaces variables it sets and keeps the rest") {
  std::string a = "PATH=/bin", b = "DRAGON_TOKEN=old", c = "HOME=/root";
  char* base[] = {a.data(), b.data(), c.data(), nullptr};
  auto env = MergeEnvironment(base, {{"DRAGON_TOKEN", "new"}});
  CHECK(env == std::vector<std::string>{"PATH=/bin", "HOME=/root", "DRAGON_TOKEN=new"});
}

}  // namespace
}  // namespace dragon::daemon
