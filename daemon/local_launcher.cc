#include "daemon/local_launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

LocalLauncher::~LocalLauncher() { Stop(absl::Seconds(2)); }

absl::Status LocalLauncher::Launch(const AgentLaunchSpec& spec) {
  if (access(spec.agent_binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("agent binary ", spec.agent_binary,
                                            " is not executable: ", strerror(errno)));
  }
  std::vector<std::string> args = {spec.agent_binary,
                                   absl::StrCat("--head=", spec.head_address),
                                   absl::StrCat("--node-id=", node_id_),
                                   absl::StrCat("--run-dir=", spec.run_dir),
                                   absl::StrCat("--workers=", spec.workers_per_node),
                                   absl::StrCat("--log-level=", spec.log_level)};
  if (!spec.python.empty()) args.push_back(absl::StrCat("--python=", spec.python));
  const std::string out_path = absl::StrCat(spec.run_dir, "/agent-", node_id_, ".log");
  // Everything below is prepared before fork: the child may only exec.
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (out_fd < 0) {
    return absl::InternalError(absl::StrCat("cannot open ", out_path, ": ", strerror(errno)));
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
    execv(argv[0], argv.data());
    dprintf(2, "dragond: cannot exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(out_fd);
  pid_ = pid;
  spdlog::info("local agent {} started: pid {} ({})", node_id_, pid, spec.agent_binary);
  reaper_ = std::thread([this, pid, out_path] {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    exited_ = true;
    std::string how = WIFSIGNALED(status)
                          ? absl::StrCat("killed by signal ", WTERMSIG(status))
                          : absl::StrCat("exited with code ", WEXITSTATUS(status));
    if (stopping_) {
      spdlog::info("local agent {} (pid {}) {}", node_id_, pid, how);
    } else {
      spdlog::error("local agent {} (pid {}) {} unexpectedly; see {}", node_id_, pid, how, out_path);
    }
  });
  return absl::OkStatus();
}

void LocalLauncher::Stop(absl::Duration grace) {
  stopping_ = true;
  if (pid_ <= 0) return;
  absl::Time deadline = absl::Now() + grace;
  while (!exited_ && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  if (!exited_) {
    spdlog::warn("local agent {} (pid {}) still running after {}; sending SIGTERM", node_id_,
                 pid_, absl::FormatDuration(grace));
    kill(pid_, SIGTERM);
    deadline = absl::Now() + absl::Seconds(5);
    while (!exited_ && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    if (!exited_) {
      spdlog::error("local agent {} (pid {}) ignored SIGTERM; killing it", node_id_, pid_);
      kill(pid_, SIGKILL);
    }
  }
  if (reaper_.joinable()) reaper_.join();
  pid_ = -1;
}

}  // namespace dragon::daemon
