#include "daemon/start_config.h"

#include <catch2/catch.hpp>

namespace dragon::daemon {
namespace {

std::string Problem(StartConfig c) {
  absl::Status s = c.Validate();
  return s.ok() ? "" : std::string(s.message());
}

TEST_CASE("the defaults are valid") { CHECK(Problem(StartConfig{}).empty()); }

TEST_CASE("each bad value is refused naming its flag") {
  StartConfig c;
  c.port = 70000;
  CHECK(Problem(c).find("--port 70000") != std::string::npos);
  c = StartConfig{};
  c.heartbeat_timeout_ms = 1500;
  CHECK(Problem(c).find("--heartbeat-timeout-ms 1500") != std::string::npos);
  c = StartConfig{};
  c.auth = "maybe";
  CHECK(Problem(c).find("--auth 'maybe'") != std::string::npos);
  c = StartConfig{};
  c.tls_cert = "c.pem";
  CHECK(Problem(c).find("--tls-key") != std::string::npos);
  c = StartConfig{};
  c.max_prefetch = 0;
  CHECK(Problem(c).find("--max-prefetch") != std::string::npos);
  c = StartConfig{};
  c.start_timeout_s = 0;
  CHECK(Problem(c).find("--start-timeout") != std::string::npos);
  c = StartConfig{};
  c.agent_env = "PYTHONPATH,DRAGON_TOKEN";
  CHECK(Problem(c).find("--agent-env") != std::string::npos);
  c = StartConfig{};
  c.launcher.nodes = -1;
  CHECK(Problem(c).find("--nodes -1 must be at least 1") != std::string::npos);
  c = StartConfig{};
  c.launcher.time = "5x";
  CHECK(Problem(c).find("--time '5x'") != std::string::npos);
  c = StartConfig{};
  c.launcher.time = "1-12:00:00";
  CHECK(Problem(c).empty());
  c = StartConfig{};
  c.launcher.partition = "de bug";
  CHECK(Problem(c).find("--partition 'de bug'") != std::string::npos);
  c = StartConfig{};
  c.launcher.pbs_exec = "rsh";
  CHECK(Problem(c).find("--pbs-exec 'rsh'") != std::string::npos);
  c = StartConfig{};
  c.keep_finished = -5;
  CHECK(Problem(c).find("--keep-finished") != std::string::npos);
  c = StartConfig{};
  c.shm_pool_mb = -2;
  CHECK(Problem(c).find("--shm-pool-mb -2") != std::string::npos);
}

}  // namespace
}  // namespace dragon::daemon
