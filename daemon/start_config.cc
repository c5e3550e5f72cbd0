#include "daemon/start_config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/ascii.h"
#include "common/host.h"
#include "daemon/head.h"
#include "daemon/launchers/pbs_launcher.h"
#include "daemon/launchers/slurm_tools.h"

namespace dragon::daemon {
namespace {

absl::Status InRange(const char* flag, int64_t value, int64_t low, int64_t high) {
  if (value >= low && value <= high) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(flag, " ", value, " is not in ", low, "..", high));
}

}  // namespace

LauncherConfig StartConfig::ResolvedLauncher() const {
  LauncherConfig resolved = launcher;
  if (resolved.local_node_id.empty()) resolved.local_node_id = common::Hostname();
  resolved.start_timeout_s = start_timeout_s;
  if (resolved.dragond_binary.empty()) resolved.dragond_binary = common::SelfExe();
  return resolved;
}

absl::Status StartConfig::Validate() const {
  absl::Status checks[] = {
      InRange("--port", port, 0, 65535),
      InRange("--workers", workers, 0, 4096),
      InRange("--shm-pool-mb", shm_pool_mb, -1, 1 << 24),
      InRange("--max-payload-mb", max_payload_mb, 1, 1900),
      InRange("--prefetch", prefetch, 0, 1000),
      InRange("--heartbeat-interval-ms", heartbeat_interval_ms, 50, 60000),
      InRange("--node-grace", node_grace_s, 0, 86400),
      InRange("--infra-retries", infra_retries, 0, kMaxInfraRetries),
      InRange("--agent-restarts", launcher.agent_restarts, 0, 1000),
      InRange("--start-timeout", start_timeout_s, 1, 86400),
  };
  for (const absl::Status& s : checks) {
    if (!s.ok()) return s;
  }
  if (max_prefetch < prefetch || max_prefetch > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("--max-prefetch ", max_prefetch,
                                                   " is not in --prefetch (", prefetch,
                                                   ")..1000"));
  }
  if (auth != "token" && auth != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth '", auth, "' is not supported (use 'token' or 'none')"));
  }
  if (tls_cert.empty() != tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!tls_ca.empty() && tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-ca needs --tls-cert and --tls-key");
  }
  if (heartbeat_timeout_ms < 2 * heartbeat_interval_ms || heartbeat_timeout_ms > 600000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--heartbeat-timeout-ms ", heartbeat_timeout_ms,
        " must be at least twice --heartbeat-interval-ms (", heartbeat_interval_ms,
        ") and at most 600000"));
  }
  if (launcher.nodes < 0 || launcher.nodes > 100000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--nodes ", launcher.nodes, " must be at least 1 (and at most 100000)"));
  }
  if (!launcher.time.empty()) {
    if (auto t = ParseSlurmTime(launcher.time, "--time"); !t.ok()) return t.status();
  }
  const std::pair<const char*, const std::string*> names[] = {
      {"--partition", &launcher.partition}, {"--account", &launcher.account},
      {"--queue", &launcher.queue}};
  for (const auto& [flag, value] : names) {
    for (char c : *value) {
      if (absl::ascii_isspace(static_cast<unsigned char>(c)) ||
          absl::ascii_iscntrl(static_cast<unsigned char>(c)) || c == '#' || c == '\'') {
        return absl::InvalidArgumentError(
            absl::StrCat(flag, " '", *value, "' is not a name (it holds spaces or symbols)"));
      }
    }
  }
  if (launcher.pbs_exec != "ssh" && launcher.pbs_exec != "pbsdsh" &&
      launcher.pbs_exec != "mpiexec") {
    return absl::InvalidArgumentError(
        absl::StrCat("--pbs-exec '", launcher.pbs_exec, "' is not one of ", kPbsExecKinds));
  }
  for (absl::string_view name : absl::StrSplit(agent_env, ',', absl::SkipEmpty())) {
    if (name.find('=') != absl::string_view::npos || name == "DRAGON_TOKEN") {
      return absl::InvalidArgumentError(absl::StrCat(
          "--agent-env takes names of variables to forward, not '", name, "'"));
    }
  }
  return ValidateKeepFinished(keep_finished);
}

}  // namespace dragon::daemon
