// Waiting for a launcher's agents: `dragond start` returns (and a job script
// goes on) once every node's agent is ready, or says which could not start
// and why; `dragonctl nodes add` waits the same way for the hosts it added.
#ifndef DRAGON_DAEMON_AGENT_STARTUP_H_
#define DRAGON_DAEMON_AGENT_STARTUP_H_

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "daemon/head.h"
#include "daemon/launchers/launcher.h"

namespace dragon::daemon {

using ProgressSink = std::function<void(const std::string& message)>;

// What the launcher reports: progress is passed on (and logged), failed
// nodes are kept, problems go to the head (for the errors of work that
// fails for want of nodes).
class StartupObserver final : public LaunchObserver {
 public:
  StartupObserver(Head* head, ProgressSink progress);
  void Progress(const std::string& message) override;
  void NodeFailed(const std::string& node, const std::string& why) override;
  void Problem(const std::string& problem) override;
  // Failures recorded since `since_us` (microseconds since the epoch), by node.
  std::map<std::string, std::string> FailuresSince(int64_t since_us) const;

 private:
  struct Failure {
    std::string why;
    int64_t at_us;
  };
  Head* head_;
  ProgressSink progress_;
  mutable std::mutex mu_;
  std::map<std::string, Failure> failures_;
};

struct StartupOutcome {
  std::vector<std::string> ready;
  std::map<std::string, std::string> failed;  // node -> why
  std::vector<std::string> missing;           // neither ready nor failed in time
};

// Polls the head until every node of `nodes` is ready (its agent answered a
// ping) or failed to start (after `since_us`), or `timeout` passes.
// Reports progress every few seconds.
StartupOutcome WaitForAgents(const Head& head, const StartupObserver& observer,
                             const std::vector<std::string>& nodes, int64_t since_us,
                             absl::Duration timeout, const ProgressSink& progress);

// One "NODE: why" per node of `outcome` that is not ready: its failure, or
// that it did not register within `timeout` (and where its log is).
std::vector<std::string> StartupProblems(const StartupOutcome& outcome, absl::Duration timeout,
                                         const std::string& run_dir);

// OK when every node is ready, or with `allow_missing` at least one is;
// else an error naming each node that did not come and why (or where its log
// is), and the options that matter.
absl::Status CheckStartup(const StartupOutcome& outcome, bool allow_missing,
                          absl::Duration timeout, const std::string& run_dir);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_AGENT_STARTUP_H_
