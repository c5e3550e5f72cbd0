// Everything `dragond start` was asked for, checked before anything starts.
#ifndef DRAGON_DAEMON_START_CONFIG_H_
#define DRAGON_DAEMON_START_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "daemon/launchers/launcher_factory.h"
#include "daemon/task_table.h"

namespace dragon::daemon {

struct StartConfig {
  bool foreground = false;
  std::string listen;  // --listen (--host): address, host name or interface; "" = by launcher
  int port = 0;
  std::string run_dir;
  int workers = 0;
  // Each agent's shared-memory pool in MiB (dragon-agent --shm-pool-mb); -1 =
  // the agent's default, 0 = no pool.
  int shm_pool_mb = -1;
  std::string python;
  bool exit_with_parent = false;
  bool no_current = false;
  std::string log_level = "info";
  int max_payload_mb = 256;
  int prefetch = 1;
  int max_prefetch = 16;
  int64_t keep_finished = kDefaultKeepFinished;
  std::string agent_binary;  // "" = next to dragond
  std::string auth = "token";
  std::string tls_cert, tls_key, tls_ca;
  int heartbeat_interval_ms = 1000;
  int heartbeat_timeout_ms = 4000;
  int node_grace_s = 30;
  int infra_retries = 1;
  LauncherConfig launcher;
  int start_timeout_s = 120;  // for every agent to be ready
  bool allow_missing = false;
  std::string agent_env = "PYTHONPATH";  // forwarded to remote agents, comma-separated names

  // The first problem, as an error naming the flag and the accepted values.
  absl::Status Validate() const;
  // The launcher's options with what dragond knows of itself filled in (this
  // host's name, its own path, the start timeout).
  LauncherConfig ResolvedLauncher() const;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_START_CONFIG_H_
