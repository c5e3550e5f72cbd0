#include "agent/worker_process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/spawn.h"

extern char** environ;

namespace dragon::agent {
namespace {

// Wait status recorded when someone else reaped our child (ECHILD); it can
// only happen if the process mishandles SIGCHLD, but must not crash us.
constexpr int kUnknownWaitStatus = -1;

// Pipes up to 1 MiB so that a typical payload or result moves in one write
// instead of 16 poll round trips of the default 64 KiB. Best effort: the
// system limit (/proc/sys/fs/pipe-max-size) may refuse it.
constexpr int kPipeSize = 1 << 20;

absl::Status ErrnoError(absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(err)));
}

void CloseIfOpen(int* fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

// Only async-signal-safe calls (they run in the child between fork and
// exec): the agent is multithreaded (gRPC), so no malloc or locks.
void WriteAll(int fd, const char* s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

void WriteInt(int fd, int v) {
  char buf[16];
  int i = sizeof(buf);
  buf[--i] = '\0';
  bool neg = v < 0;
  unsigned u = neg ? -static_cast<unsigned>(v) : static_cast<unsigned>(v);
  do {
    buf[--i] = static_cast<char>('0' + u % 10);
    u /= 10;
  } while (u != 0 && i > 1);
  if (neg) buf[--i] = '-';
  WriteAll(fd, buf + i);
}

// What the worker's log (or, before its fds are in place, the agent's
// stderr) says when the child could not start it; it then exits 127.
void WorkerFailureNote(common::SpawnStep step, int err, const char* argv0) {
  if (step == common::SpawnStep::kExec) {
    WriteAll(2, "dragon-agent: cannot execute ");
    WriteAll(2, argv0);
    WriteAll(2, ": ");
    WriteAll(2, err == ENOENT ? "not found" : err == EACCES ? "permission denied" : "exec failed");
    WriteAll(2, " (errno ");
    WriteInt(2, err);
    WriteAll(2, ")\n");
    return;
  }
  WriteAll(2, "dragon-agent: worker start failed: ");
  WriteAll(2, step == common::SpawnStep::kMoveFds ? "fcntl(F_DUPFD)" : "dup2");
  WriteAll(2, ": errno ");
  WriteInt(2, err);
  WriteAll(2, "\n");
}

}  // namespace

std::string DescribeExit(int wait_status) {
  if (wait_status == kUnknownWaitStatus) return "exited with unknown status (reaped elsewhere)";
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with code ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* abbrev = sigabbrev_np(sig);
    std::string text = absl::StrCat("killed by signal ", sig);
    if (abbrev != nullptr) absl::StrAppend(&text, " SIG", abbrev);
    if (WCOREDUMP(wait_status)) absl::StrAppend(&text, ", core dumped");
    return text;
  }
  return absl::StrCat("ended with wait status 0x", absl::Hex(wait_status));
}

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Start(const WorkerSpec& spec) {
  if (spec.argv.empty()) return absl::InvalidArgumentError("worker command line is empty");

  // The agent's environment with spec.env in place of same-named entries.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view entry(*e);
    bool overridden = false;
    for (const auto& [key, value] : spec.env) {
      if (entry.size() > key.size() && entry.substr(0, key.size()) == key &&
          entry[key.size()] == '=') {
        overridden = true;
        break;
      }
    }
    if (!overridden) env_strings.emplace_back(entry);
  }
  for (const auto& [key, value] : spec.env) env_strings.push_back(absl::StrCat(key, "=", value));

  int log_fd = open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return ErrnoError(absl::StrCat("cannot open worker log ", spec.log_path), errno);
  int run_pipe[2] = {-1, -1};     // agent writes [1], worker reads [0] as fd 3
  int result_pipe[2] = {-1, -1};  // worker writes [1] as fd 4, agent reads [0]
  auto cleanup = [&] {
    CloseIfOpen(&log_fd);
    for (int* fd : {&run_pipe[0], &run_pipe[1], &result_pipe[0], &result_pipe[1]}) CloseIfOpen(fd);
  };
  if (pipe2(run_pipe, O_CLOEXEC) != 0 || pipe2(result_pipe, O_CLOEXEC) != 0) {
    absl::Status s = ErrnoError("pipe2", errno);
    cleanup();
    return s;
  }
  fcntl(run_pipe[1], F_SETPIPE_SZ, kPipeSize);
  fcntl(result_pipe[1], F_SETPIPE_SZ, kPipeSize);

  common::SpawnSpec spawn;
  spawn.path = spec.argv[0];
  spawn.search_path = true;  // execvpe: a bare name is looked up in the agent's PATH
  spawn.argv = spec.argv;
  spawn.env = std::move(env_strings);
  // Own process group: a Ctrl-C aimed at whoever started the agent must not
  // hit workers mid-task; the agent stops them itself.
  spawn.group = common::SpawnSpec::Group::kNewGroup;
  spawn.death_signal = SIGKILL;  // die with the agent; if it is already gone, do not start
  // The agent blocks SIGTERM/SIGINT and ignores SIGPIPE; the worker must not inherit that.
  spawn.default_signals = {SIGPIPE, SIGTERM, SIGINT};
  spawn.fds = {common::ChildFd::DevNull(O_RDONLY), common::ChildFd::Dup(log_fd),
               common::ChildFd::Dup(log_fd), common::ChildFd::Dup(run_pipe[0]),
               common::ChildFd::Dup(result_pipe[1])};
  // Exactly 0-4 survive: anything else (e.g. a library's fd without
  // close-on-exec) is closed.
  spawn.other_fds = common::SpawnSpec::OtherFds::kClose;
  // fork, and no report pipe: an exec failure is exit code 127 with the
  // reason in the worker's log (the pool reports the worker's death).
  spawn.report = common::ChildReport::kNone;
  spawn.note = WorkerFailureNote;
  common::SpawnError error;
  absl::StatusOr<common::Spawned> spawned = common::Spawn(spawn, &error);
  if (!spawned.ok()) {
    cleanup();
    if (error.stage == common::SpawnError::kFork) return ErrnoError("fork", error.err);
    return spawned.status();  // "cannot open /dev/null: ..."
  }
  const pid_t pid = spawned->pid;
  const int to_fd = run_pipe[1];
  const int from_fd = result_pipe[0];
  run_pipe[1] = result_pipe[0] = -1;  // kept; the rest belongs to the child now
  cleanup();
  fcntl(to_fd, F_SETFL, fcntl(to_fd, F_GETFL) | O_NONBLOCK);
  fcntl(from_fd, F_SETFL, fcntl(from_fd, F_GETFL) | O_NONBLOCK);
  return std::unique_ptr<WorkerProcess>(new WorkerProcess(pid, to_fd, from_fd));
}

WorkerProcess::~WorkerProcess() {
  CloseToWorker();
  CloseFromWorker();
  if (!reaped()) {
    kill(pid_, SIGKILL);
    Wait();
  }
}

void WorkerProcess::CloseToWorker() { CloseIfOpen(&to_worker_fd_); }
void WorkerProcess::CloseFromWorker() { CloseIfOpen(&from_worker_fd_); }

absl::Status WorkerProcess::Signal(int sig) {
  // After reaping, the pid may belong to an unrelated process.
  if (reaped()) return absl::OkStatus();
  if (kill(pid_, sig) != 0 && errno != ESRCH) {
    return ErrnoError(absl::StrCat("kill(", pid_, ", ", sig, ")"), errno);
  }
  return absl::OkStatus();
}

std::optional<int> WorkerProcess::TryReap() {
  if (reaped()) return wait_status_;
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    wait_status_ = status;
  } else if (r < 0 && errno == ECHILD) {
    wait_status_ = kUnknownWaitStatus;
  }
  return wait_status_;
}

int WorkerProcess::Wait() {
  if (reaped()) return *wait_status_;
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  wait_status_ = r == pid_ ? status : kUnknownWaitStatus;
  return *wait_status_;
}

}  // namespace dragon::agent
