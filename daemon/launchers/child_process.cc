#include "daemon/launchers/child_process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/spawn.h"
#include "daemon/launchers/agent_command.h"

extern char** environ;

namespace dragon::daemon {
namespace {

std::string Describe(int status) {
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return absl::StrCat("exited with code ", WEXITSTATUS(status));
}

void WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the child closed its stdin: its exit tells the rest
    done += static_cast<size_t>(n);
  }
}

// Forks and execs; `in_fd`, `out_fd`, `err_fd` become 0, 1, 2 of the child.
absl::StatusOr<pid_t> ForkExec(const std::vector<std::string>& argv_in,
                               const std::vector<std::pair<std::string, std::string>>& env_in,
                               int in_fd, int out_fd, int err_fd, bool die_with_parent) {
  if (argv_in.empty() || argv_in[0].empty()) return absl::InvalidArgumentError("empty command");
  common::SpawnSpec spec;
  // argv[0] may be a bare name: execvpe looks it up in dragond's PATH.
  spec.path = argv_in[0];
  spec.search_path = true;
  spec.argv = argv_in;
  spec.env = MergeEnvironment(environ, env_in);
  if (die_with_parent) spec.death_signal = SIGTERM;
  spec.default_signals = {SIGPIPE};  // dragond ignores it; what it starts must not inherit that
  spec.fds = {common::ChildFd::Dup(in_fd), common::ChildFd::Dup(out_fd),
              common::ChildFd::Dup(err_fd)};
  // dragond opens everything O_CLOEXEC; launchers never closed the rest.
  spec.other_fds = common::SpawnSpec::OtherFds::kLeave;
  // Returns once it exec'd; otherwise "cannot run ARGV0: <errno text>", as before.
  spec.report = common::ChildReport::kWait;
  absl::StatusOr<common::Spawned> spawned = common::Spawn(spec);
  if (!spawned.ok()) return spawned.status();
  return spawned->pid;
}

}  // namespace

absl::StatusOr<ChildProcess> ChildProcess::Start(const ChildSpec& spec) {
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  int out_fd = null_fd;
  if (!spec.log_path.empty()) {
    out_fd = open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (out_fd < 0) {
      const std::string err = strerror(errno);
      close(null_fd);
      return absl::InternalError(absl::StrCat("cannot open ", spec.log_path, ": ", err));
    }
  }
  int in_pipe[2] = {-1, -1};
  if (!spec.stdin_data.empty() && pipe2(in_pipe, O_CLOEXEC) != 0) {
    in_pipe[0] = in_pipe[1] = -1;
  }
  const int in_fd = in_pipe[0] >= 0 ? in_pipe[0] : null_fd;
  absl::StatusOr<pid_t> pid =
      ForkExec(spec.argv, spec.env, in_fd, out_fd, out_fd, spec.die_with_parent);
  if (in_pipe[0] >= 0) close(in_pipe[0]);
  if (out_fd != null_fd) close(out_fd);
  close(null_fd);
  if (!pid.ok()) {
    if (in_pipe[1] >= 0) close(in_pipe[1]);
    return pid.status();
  }
  if (in_pipe[1] >= 0) {
    WriteAll(in_pipe[1], spec.stdin_data);
    close(in_pipe[1]);
  }
  return ChildProcess(*pid);
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(other.pid_), ended_(std::move(other.ended_)), exit_code_(other.exit_code_) {
  other.pid_ = -1;
}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  pid_ = other.pid_;
  ended_ = std::move(other.ended_);
  exit_code_ = other.exit_code_;
  other.pid_ = -1;
  return *this;
}

ChildProcess::~ChildProcess() = default;

std::optional<std::string> ChildProcess::TryReap() {
  if (ended_ || pid_ <= 0) return ended_;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0 || (r < 0 && errno == EINTR)) return std::nullopt;
  if (r == pid_) {
    ended_ = Describe(status);
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  } else {
    ended_ = "vanished";
  }
  return ended_;
}

std::optional<std::string> ChildProcess::WaitFor(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!TryReap() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  return ended_;
}

void ChildProcess::Signal(int sig) const {
  if (pid_ > 0 && !ended_) kill(pid_, sig);
}

std::string ChildProcess::Terminate(absl::Duration grace) {
  if (TryReap()) return *ended_;
  Signal(SIGTERM);
  if (WaitFor(grace)) return *ended_;
  Signal(SIGKILL);
  WaitFor(absl::Seconds(5));
  return ended_.value_or("did not end after SIGKILL");
}

absl::StatusOr<CommandResult> RunCommand(
    const std::vector<std::string>& argv,
    const std::vector<std::pair<std::string, std::string>>& env, absl::Duration timeout,
    const std::string& stdin_data) {
  int out[2], err[2], in[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  if (pipe2(err, O_CLOEXEC) != 0) {
    close(out[0]);
    close(out[1]);
    return absl::InternalError("pipe failed");
  }
  if (pipe2(in, O_CLOEXEC) != 0) {
    for (int fd : {out[0], out[1], err[0], err[1]}) close(fd);
    return absl::InternalError("pipe failed");
  }
  absl::StatusOr<pid_t> pid = ForkExec(argv, env, in[0], out[1], err[1], /*die_with_parent=*/true);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (!pid.ok()) {
    for (int fd : {in[1], out[0], err[0]}) close(fd);
    return pid.status();
  }
  WriteAll(in[1], stdin_data);
  close(in[1]);
  CommandResult result;
  const absl::Time deadline = absl::Now() + timeout;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) {
      result.timed_out = true;
      kill(*pid, SIGKILL);
      break;
    }
    if (poll(fds, 2, static_cast<int>(std::min<int64_t>(left_ms, 1000))) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        (i == 0 ? result.out : result.err).append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  int status = 0;
  while (waitpid(*pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string FileTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = size > static_cast<std::streamoff>(max_bytes)
                                   ? size - static_cast<std::streamoff>(max_bytes)
                                   : 0;
  in.seekg(start);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string ShellQuote(const std::string& word) {
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  out += "'";
  return out;
}

}  // namespace dragon::daemon
