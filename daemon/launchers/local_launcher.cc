#include "daemon/launchers/local_launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/launchers/agent_command.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace dragon::daemon {
namespace {

std::string DescribeStatus(int status) {
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return absl::StrCat("exited with code ", WEXITSTATUS(status));
}

}  // namespace

LocalLauncher::~LocalLauncher() { Stop(absl::Seconds(2)); }

absl::Status LocalLauncher::Launch(const AgentLaunchSpec& spec) {
  spec_ = spec;
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
  std::vector<std::string> env = MergeEnvironment(environ, cmd.env);
  // Everything below is prepared before fork: the child may only exec.
  std::vector<char*> argv, envp;
  std::vector<std::string> args = cmd.argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  int out_fd = open(cmd.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (out_fd < 0) {
    return absl::InternalError(absl::StrCat("cannot open ", cmd.log_path, ": ", strerror(errno)));
  }
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(out_fd);
    return absl::InternalError(absl::StrCat("fork failed: ", strerror(errno)));
  }
  if (pid == 0) {
    // The agent must not outlive dragond, even if dragond is killed -9.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    int null_fd = open("/dev/null", O_RDONLY);
    dup2(null_fd, 0);
    dup2(out_fd, 1);
    dup2(out_fd, 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(argv[0], argv.data(), envp.data());
    dprintf(2, "dragond: cannot exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(out_fd);
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
  if (pid_ <= 0) return "";
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0 || (r < 0 && errno == EINTR)) return "";
  const std::string how = r == pid_ ? DescribeStatus(status) : "vanished";
  pid_ = -1;
  return how;
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
      kill(pid_, SIGKILL);
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
      if (options_.report_problem) options_.report_problem(problem);
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
  std::unique_lock<std::mutex> lock(mu_);
  if (pid_ <= 0) return;
  const pid_t pid = pid_;
  absl::Time deadline = absl::Now() + grace;
  std::string how;
  while ((how = ReapLocked()).empty() && absl::Now() < deadline) {
    cv_.wait_for(lock, std::chrono::milliseconds(20));
  }
  if (how.empty()) {
    spdlog::warn("local agent {} (pid {}) still running after {}; sending SIGTERM",
                 options_.node_id, pid, absl::FormatDuration(grace));
    kill(pid, SIGTERM);
    deadline = absl::Now() + absl::Seconds(5);
    while ((how = ReapLocked()).empty() && absl::Now() < deadline) {
      cv_.wait_for(lock, std::chrono::milliseconds(20));
    }
    if (how.empty()) {
      spdlog::error("local agent {} (pid {}) ignored SIGTERM; killing it", options_.node_id, pid);
      kill(pid, SIGKILL);
      int status = 0;
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      how = DescribeStatus(status);
      pid_ = -1;
    }
  }
  spdlog::info("local agent {} (pid {}) {}", options_.node_id, pid, how);
}

}  // namespace dragon::daemon
