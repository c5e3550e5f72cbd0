#include "daemon/agent_startup.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

StartupObserver::StartupObserver(Head* head, ProgressSink progress)
    : head_(head), progress_(std::move(progress)) {}

void StartupObserver::Progress(const std::string& message) {
  spdlog::info("{}", message);
  if (progress_) progress_(message);
}

void StartupObserver::NodeFailed(const std::string& node, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_[node] = Failure{why, NowMicros()};
}

void StartupObserver::Problem(const std::string& problem) { head_->NoteLaunchProblem(problem); }

std::map<std::string, std::string> StartupObserver::FailuresSince(int64_t since_us) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, std::string> out;
  for (const auto& [node, failure] : failures_) {
    if (failure.at_us >= since_us) out[node] = failure.why;
  }
  return out;
}

StartupOutcome WaitForAgents(const Head& head, const StartupObserver& observer,
                             const std::vector<std::string>& nodes, int64_t since_us,
                             absl::Duration timeout, const ProgressSink& progress) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  absl::Time next_report = start + absl::Seconds(5);
  StartupOutcome outcome;
  while (true) {
    std::set<std::string> ready;
    // Kept in a variable: a range-for over a temporary's member would dangle.
    const dragon::v1::ListNodesReply listed = head.ListNodes();
    for (const auto& node : listed.nodes()) {
      // Ready (or draining): its agent answered a ping. Registered after the
      // wait began, so an old incarnation does not count for an added node.
      if ((node.state() == "ready" || node.state() == "draining") &&
          node.connected_us() >= since_us) {
        ready.insert(node.node_id());
      }
    }
    const std::map<std::string, std::string> failed = observer.FailuresSince(since_us);
    outcome = StartupOutcome{};
    for (const std::string& node : nodes) {
      if (ready.count(node) != 0) {
        outcome.ready.push_back(node);
      } else if (auto f = failed.find(node); f != failed.end()) {
        outcome.failed[node] = f->second;
      } else {
        outcome.missing.push_back(node);
      }
    }
    if (outcome.missing.empty() || absl::Now() >= deadline) return outcome;
    if (absl::Now() >= next_report && progress) {
      progress(absl::StrCat(outcome.ready.size(), " of ", nodes.size(),
                            " agents ready after ", absl::FormatDuration(absl::Trunc(
                                                        absl::Now() - start, absl::Seconds(1))),
                            "; waiting for ", absl::StrJoin(outcome.missing, ", ")));
      next_report = absl::Now() + absl::Seconds(5);
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

std::vector<std::string> StartupProblems(const StartupOutcome& outcome, absl::Duration timeout,
                                         const std::string& run_dir) {
  std::vector<std::string> problems;
  for (const auto& [node, why] : outcome.failed) {
    problems.push_back(absl::StrCat(node, ": ", why));
  }
  for (const std::string& node : outcome.missing) {
    problems.push_back(absl::StrCat(node, ": its agent did not register within ",
                                    absl::FormatDuration(timeout), " (see ", run_dir, "/agent-",
                                    node, ".log on that node; dragond --start-timeout)"));
  }
  return problems;
}

absl::Status CheckStartup(const StartupOutcome& outcome, bool allow_missing,
                          absl::Duration timeout, const std::string& run_dir) {
  if (outcome.failed.empty() && outcome.missing.empty()) return absl::OkStatus();
  const std::vector<std::string> problems = StartupProblems(outcome, timeout, run_dir);
  const std::string text = absl::StrJoin(problems, "; ");
  if (allow_missing && !outcome.ready.empty()) {
    spdlog::warn("starting without {} node(s) (--allow-missing): {}", problems.size(), text);
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat(
      "agents could not start on ", problems.size(), " node(s): ", text,
      allow_missing ? "" : " (--allow-missing starts without them)"));
}

}  // namespace dragon::daemon
