#include "daemon/launchers/local_launcher.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/launchers/agent_command.h"
#include "daemon/launchers/child_process.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

LocalLauncher::~LocalLauncher() { Stop(absl::Seconds(2)); }

absl::Status LocalLauncher::Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) {
  spec_ = spec;
  observer_ = observer;
  absl::StatusOr<pid_t> pid = Spawn();
  if (!pid.ok()) return pid.status();
  {
    std::lock_guard<std::mutex> lock(mu_);
    pid_ = *pid;
    started_at_ = absl::Now();
  }
  supervisor_ = std::thread([this] { Supervise(); });
  return absl::OkStatus();
}

absl::StatusOr<pid_t> LocalLauncher::Spawn() {
  if (access(spec_.agent_binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("agent binary ", spec_.agent_binary,
                                            " is not executable: ", strerror(errno)));
  }
  const AgentCommand cmd = BuildAgentCommand(spec_, options_.node_id);
  ChildSpec child;
  child.argv = cmd.argv;
  child.env = cmd.env;
  child.log_path = cmd.log_path;
  absl::StatusOr<ChildProcess> started = ChildProcess::Start(child);
  if (!started.ok()) return started.status();
  const pid_t pid = started->pid();
  child_.emplace(*std::move(started));
  spdlog::info("local agent {} started: pid {} ({})", options_.node_id, pid, spec_.agent_binary);
  return pid;
}

void LocalLauncher::OnAgentLost(const AgentLoss& loss) {
  std::lock_guard<std::mutex> lock(mu_);
  if (loss.pid != pid_ || pid_ <= 0) return;  // an older process, already handled
  kill_requested_ = true;
  lost_reason_ = loss.reason;
  cv_.notify_all();
}

std::string LocalLauncher::ReapLocked() {
  if (pid_ <= 0 || !child_) return "";
  std::optional<std::string> how = child_->TryReap();
  if (!how) return "";
  pid_ = -1;
  child_.reset();
  return *how;
}

absl::Duration LocalLauncher::Backoff() const {
  // Doubles per restart in a row: a broken install does not spin.
  return std::min(options_.max_backoff,
                  options_.first_backoff * (int64_t{1} << std::min(restarts_in_row_, 20)));
}

void LocalLauncher::Supervise() {
  std::unique_lock<std::mutex> lock(mu_);
  std::optional<absl::Time> restart_at;  // while no agent runs and a restart is planned
  std::string last_failure;
  while (true) {
    // The agent's exit is polled: cheap, and one thread does everything.
    auto wait = std::chrono::milliseconds(50);
    if (restart_at) {
      wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(
                                absl::ToChronoMicroseconds(*restart_at - absl::Now())) +
                                std::chrono::milliseconds(1));
    }
    cv_.wait_for(lock, std::max(wait, std::chrono::milliseconds(1)),
                 [this] { return stopping_ || kill_requested_; });
    if (stopping_) return;
    if (kill_requested_ && pid_ > 0) {
      spdlog::warn("local agent {} (pid {}) was declared lost by the head ({}); killing it",
                   options_.node_id, pid_, lost_reason_);
      child_->Signal(SIGKILL);
    }
    kill_requested_ = false;
    if (pid_ > 0) {
      const pid_t pid = pid_;
      const absl::Time started = started_at_;
      const std::string how = ReapLocked();
      if (how.empty()) continue;
      last_failure = absl::StrCat("pid ", pid, " ", how);
      if (absl::Now() - started >= options_.stable_after) restarts_in_row_ = 0;
      spdlog::error("local agent {} (pid {}) {}; see {}/agent-{}.log", options_.node_id, pid, how,
                    spec_.run_dir, options_.node_id);
      restart_at = absl::Now() + Backoff();
      continue;
    }
    if (!restart_at || absl::Now() < *restart_at) continue;
    restart_at.reset();
    if (restarts_in_row_ >= options_.max_restarts) {
      const std::string problem = absl::StrCat(
          "the local agent ", options_.node_id, " could not be kept running: ", restarts_in_row_,
          " restarts in a row failed, the last because ", last_failure, " (see ", spec_.run_dir,
          "/agent-", options_.node_id, ".log)");
      spdlog::error("{}; giving up", problem);
      if (observer_ != nullptr) observer_->Problem(problem);
      continue;  // no restart is planned any more: the loop only waits for Stop
    }
    ++restarts_in_row_;
    lock.unlock();
    absl::StatusOr<pid_t> pid = Spawn();
    lock.lock();
    if (pid.ok()) {
      pid_ = *pid;
      started_at_ = absl::Now();
      spdlog::warn("local agent {} restarted ({} in a row): pid {}", options_.node_id,
                   restarts_in_row_, pid_);
    } else {
      last_failure = std::string(pid.status().message());
      spdlog::error("restarting local agent {} failed: {}", options_.node_id, last_failure);
      restart_at = absl::Now() + Backoff();
    }
  }
}

void LocalLauncher::Stop(absl::Duration grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  if (supervisor_.joinable()) supervisor_.join();
  std::lock_guard<std::mutex> lock(mu_);
  if (pid_ <= 0 || !child_) return;
  const pid_t pid = pid_;
  std::optional<std::string> how = child_->WaitFor(grace);
  if (!how) {
    spdlog::warn("local agent {} (pid {}) still running after {}; stopping it", options_.node_id,
                 pid, absl::FormatDuration(grace));
    how = child_->Terminate(absl::Seconds(5));
  }
  pid_ = -1;
  child_.reset();
  spdlog::info("local agent {} (pid {}) {}", options_.node_id, pid, *how);
}

}  // namespace dragon::daemon
