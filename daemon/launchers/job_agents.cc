#include "daemon/launchers/job_agents.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/token.h"
#include "daemon/shutdown_signal.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {
namespace {

class JobObserver final : public LaunchObserver {
 public:
  void Progress(const std::string& message) override { spdlog::info("{}", message); }
  void NodeFailed(const std::string& node, const std::string& why) override {
    spdlog::warn("the agent of {} is gone: {}", node, why);
    std::lock_guard<std::mutex> lock(mu_);
    gone_.insert(node);
  }
  void Problem(const std::string& problem) override { spdlog::warn("{}", problem); }
  bool AllGone(const std::vector<std::string>& nodes) {
    std::lock_guard<std::mutex> lock(mu_);
    return std::all_of(nodes.begin(), nodes.end(),
                       [this](const std::string& n) { return gone_.count(n) != 0; });
  }

 private:
  std::mutex mu_;
  std::set<std::string> gone_;
};

int Fail(const std::string& message, int code = 1) {
  spdlog::error("{}", message);
  return code;
}

}  // namespace

int RunJobAgents(const JobAgentsConfig& config) {
  ShutdownSignal shutdown;
  shutdown.WatchSignals();  // before any other thread
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] dragond agents: %v");
  if (config.head.empty() || config.run_dir.empty()) {
    return Fail("--head HOST:PORT and --run-dir DIR (the head's) are required", 2);
  }
  // The token, then out of the environment: what this process starts gets it
  // only the way its launcher hands it over.
  std::string token;
  if (!config.token_file.empty()) {
    absl::StatusOr<std::string> read = common::ReadTokenFile(config.token_file);
    if (!read.ok()) return Fail(std::string(read.status().message()));
    token = *std::move(read);
  } else if (char* env = std::getenv(common::kTokenEnv); env != nullptr && *env != '\0') {
    token = env;
    std::fill(env, env + token.size(), '\0');
  }
  unsetenv(common::kTokenEnv);

  LauncherConfig lc = config.launcher;
  lc.kind = ResolveLauncherKind(lc.kind, ProcessEnv());
  if (lc.kind != "slurm" && lc.kind != "pbs") {
    return Fail(absl::StrCat(
        "dragond agents starts the agents of the batch job it runs in, but this is no Slurm job "
        "(no SLURM_JOB_ID) and no PBS job (no PBS_JOBID and PBS_NODEFILE); launcher '", lc.kind,
        "'"), 2);
  }
  lc.nodes = 0;  // this job's nodes, not a new job
  lc.time.clear();
  absl::StatusOr<std::unique_ptr<Launcher>> made = MakeLauncher(lc, ProcessEnv());
  if (!made.ok()) return Fail(std::string(made.status().message()));
  std::unique_ptr<Launcher> launcher = *std::move(made);

  AgentLaunchSpec spec;
  spec.agent_binary = config.agent_binary;
  spec.head_address = config.head;
  spec.run_dir = config.run_dir;
  spec.python = config.python;
  spec.workers_per_node = config.workers;
  spec.shm_pool_mb = config.shm_pool_mb;
  spec.log_level = config.log_level;
  spec.token = token;
  spec.tls_ca = config.tls_ca;
  for (absl::string_view name : absl::StrSplit(config.agent_env, ',', absl::SkipEmpty())) {
    const std::string key(name);
    if (const char* value = getenv(key.c_str()); value != nullptr) {
      spec.forwarded_env.emplace_back(key, value);
    }
  }
  if (access(spec.agent_binary.c_str(), X_OK) != 0) {
    return Fail(absl::StrCat("cannot run the agent ", spec.agent_binary, ": ", strerror(errno),
                             " (--agent-binary; the same path must hold it on every node)"));
  }
  std::atomic<bool> stop{false};
  std::string why;
  std::thread waiter([&] {
    why = shutdown.Wait();
    stop = true;
  });
  JobObserver observer;
  spdlog::info("starting the agents of this job ({} launcher) for the head at {}",
               launcher->name(), config.head);
  int code = 0;
  if (absl::Status s = launcher->Launch(spec, &observer); !s.ok()) {
    code = Fail(absl::StrCat("cannot start the agents: ", s.message()));
  } else {
    const std::vector<std::string> nodes = launcher->ExpectedNodes();
    spdlog::info("agents started on {}", absl::StrJoin(nodes, ", "));
    while (!stop && !observer.AllGone(nodes)) absl::SleepFor(absl::Milliseconds(200));
    if (stop) spdlog::info("{}: ending the agents", why);
  }
  launcher->Stop(stop ? absl::Seconds(5) : absl::ZeroDuration());
  shutdown.Request("done");
  waiter.join();
  spdlog::info("done");
  return code;
}

}  // namespace dragon::daemon
