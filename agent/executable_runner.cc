#include "agent/executable_runner.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/process_tree.h"
#include "agent/worker_process.h"
#include "common/spawn.h"

extern char** environ;

namespace dragon::agent {
namespace {

// Bytes read from one process per Collect(), so that one chatty program does
// not starve the rest of the pool loop.
constexpr size_t kMaxReadPerPass = 4u << 20;
// After a process's pipes closed, how soon (and, later, how often) to look
// for its exit: it normally follows within microseconds.
constexpr int64_t kExitRecheckUs = 1'000;
constexpr int64_t kSlowExitRecheckUs = 50'000;
constexpr int64_t kSlowAfterUs = 1'000'000;

void CloseFd(int* fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

}  // namespace

void TailBuffer::Append(const char* data, size_t n) {
  total_ += n;
  if (limit_ == 0) return;
  if (n >= limit_) {
    buf_.assign(data + (n - limit_), limit_);
    return;
  }
  buf_.append(data, n);
  // Trim lazily (amortized): keep at most twice the limit around.
  if (buf_.size() > 2 * limit_) buf_.erase(0, buf_.size() - limit_);
}

std::string TailBuffer::Take() {
  if (buf_.size() > limit_) buf_.erase(0, buf_.size() - limit_);
  return std::move(buf_);
}

struct ExecutableRunner::Proc {
  Proc(size_t limit) : out(limit), err(limit) {}
  uint64_t task_id = 0;
  pid_t pid = 0;
  std::string argv0;
  int out_fd = -1, err_fd = -1, report_fd = -1, pid_fd = -1;
  TailBuffer out, err;
  std::string report;  // what the child wrote to the error pipe
  int64_t start_us = 0;
  int64_t deadline_us = 0;  // 0 = none
  uint32_t timeout_s = 0;
  int64_t pipes_closed_us = 0;
  bool timed_out = false;
  bool killed = false;
  std::optional<int> wait_status;
};

ExecutableRunner::ExecutableRunner(Clock now_us) : now_us_(now_us) {}

ExecutableRunner::~ExecutableRunner() {
  for (auto& [id, p] : procs_) {
    if (!p->wait_status) {
      killpg(p->pid, SIGKILL);
      kill(p->pid, SIGKILL);
      int status;
      while (waitpid(p->pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
    CloseFd(&p->out_fd);
    CloseFd(&p->err_fd);
    CloseFd(&p->report_fd);
    CloseFd(&p->pid_fd);
  }
}

absl::StatusOr<int> ExecutableRunner::Start(const v1::TaskAssignment& task) {
  return Start(task, {}, {});
}

absl::StatusOr<int> ExecutableRunner::Start(
    const v1::TaskAssignment& task, const std::vector<int>& cpus,
    const std::vector<std::pair<std::string, std::string>>& extra_env) {
  v1::ExecutableSpec spec;
  if (!spec.ParseFromString(task.payload())) {
    return absl::InvalidArgumentError("the payload is not a serialized ExecutableSpec");
  }
  if (spec.argv_size() == 0 || spec.argv(0).empty()) {
    return absl::InvalidArgumentError("ExecutableSpec has an empty argv");
  }
  // The program's environment: the agent's, then the spec's, then the grant's.
  std::vector<std::string> env_strings;
  auto extra = [&extra_env](absl::string_view key) {
    for (const auto& [k, v] : extra_env) {
      if (k == key) return true;
    }
    return false;
  };
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view entry(*e);
    const size_t eq = entry.find('=');
    if (eq != absl::string_view::npos &&
        (spec.env().count(std::string(entry.substr(0, eq))) || extra(entry.substr(0, eq)))) {
      continue;  // replaced by the spec or the grant
    }
    env_strings.emplace_back(entry);
  }
  for (const auto& [key, value] : spec.env()) {
    if (!extra(key)) env_strings.push_back(absl::StrCat(key, "=", value));
  }
  for (const auto& [key, value] : extra_env) env_strings.push_back(absl::StrCat(key, "=", value));
  std::string path_var;
  if (auto it = spec.env().find("PATH"); it != spec.env().end()) {
    path_var = it->second;
  } else if (const char* p = getenv("PATH"); p != nullptr) {
    path_var = p;
  } else {
    path_var = "/usr/local/bin:/usr/bin:/bin";
  }
  absl::StatusOr<std::string> path = common::ResolveProgram(spec.argv(0), path_var);
  if (!path.ok()) return path.status();

  const uint32_t limit = spec.capture_limit_bytes() == 0
                             ? kDefaultCaptureLimitBytes
                             : std::min(spec.capture_limit_bytes(), kMaxCaptureLimitBytes);
  int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
  auto cleanup = [&] {
    for (int* fd : {&out_pipe[0], &out_pipe[1], &err_pipe[0], &err_pipe[1]}) CloseFd(fd);
  };
  if (pipe2(out_pipe, O_CLOEXEC | O_NONBLOCK) != 0 ||
      pipe2(err_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    const int err = errno;
    cleanup();
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start '", spec.argv(0), "': pipes: ", strerror(err)));
  }
  // The child's ends must block (a program expects ordinary stdout).
  fcntl(out_pipe[1], F_SETFL, 0);
  fcntl(err_pipe[1], F_SETFL, 0);

  common::SpawnSpec spawn;
  spawn.path = *std::move(path);
  spawn.argv.assign(spec.argv().begin(), spec.argv().end());
  spawn.env = std::move(env_strings);
  spawn.cwd = spec.cwd().empty() ? task.cwd() : spec.cwd();
  // Own group: cancel and timeout kill the whole group.
  spawn.group = common::SpawnSpec::Group::kNewGroup;
  spawn.cpus = cpus;  // its grant's CPUs (inherited by everything it starts)
  spawn.death_signal = SIGKILL;
  spawn.default_signals = {SIGPIPE, SIGTERM, SIGINT, SIGHUP};
  spawn.fds = {common::ChildFd::DevNull(O_RDONLY), common::ChildFd::Dup(out_pipe[1]),
               common::ChildFd::Dup(err_pipe[1])};
  // Nothing of the agent's (worker pipes, sockets) may leak into the program.
  spawn.other_fds = common::SpawnSpec::OtherFds::kCloseOnExec;
  // vfork: the child shares our memory until it execs, so no page tables
  // are copied (fork of the agent, gRPC threads and all, took ~1 ms here).
  spawn.use_vfork = true;
  // Start() never waits: a failed chdir/exec/affinity is read from the
  // report pipe once the process has exited, and becomes a SYSTEM_ERROR.
  spawn.report = common::ChildReport::kDeferred;
  common::SpawnError error;
  absl::StatusOr<common::Spawned> spawned = common::Spawn(spawn, &error);
  if (!spawned.ok()) {
    cleanup();
    // The texts Start() always had: /dev/null and the report pipe count as "pipes".
    const char* what = error.stage == common::SpawnError::kFork ? "fork" : "pipes";
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start '", spec.argv(0), "': ", what, ": ", strerror(error.err)));
  }
  const pid_t pid = spawned->pid;
  auto proc = std::make_unique<Proc>(limit);
  proc->task_id = task.task_id();
  proc->pid = pid;
  proc->argv0 = spec.argv(0);
  proc->out_fd = out_pipe[0];
  proc->err_fd = err_pipe[0];
  proc->report_fd = spawned->report_fd;
  out_pipe[0] = err_pipe[0] = -1;
  // Readable once the process has exited, so the exit is seen at once
  // (without it, only the pipes' EOF and periodic waitpid tell).
  proc->pid_fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  cleanup();
  proc->start_us = now_us_();
  proc->timeout_s = spec.timeout_s();
  if (spec.timeout_s() > 0) {
    proc->deadline_us = proc->start_us + static_cast<int64_t>(spec.timeout_s()) * 1'000'000;
  }
  procs_[task.task_id()] = std::move(proc);
  return pid;
}

void ExecutableRunner::Kill(uint64_t task_id) {
  auto it = procs_.find(task_id);
  if (it == procs_.end()) return;
  Proc* p = it->second.get();
  p->killed = true;
  if (!p->wait_status) {
    KillTree(p->pid);  // its group, and whatever left the group
  }
}

void ExecutableRunner::AppendPollFds(std::vector<pollfd>* fds) const {
  for (const auto& [id, p] : procs_) {
    if (p->out_fd >= 0) fds->push_back({p->out_fd, POLLIN, 0});
    if (p->err_fd >= 0) fds->push_back({p->err_fd, POLLIN, 0});
    if (p->pid_fd >= 0 && !p->wait_status) fds->push_back({p->pid_fd, POLLIN, 0});
  }
}

void ExecutableRunner::ReadAvailable(Proc* p) {
  char buf[65536];
  size_t total = 0;
  for (int* fd : {&p->out_fd, &p->err_fd}) {
    TailBuffer& tail = fd == &p->out_fd ? p->out : p->err;
    while (*fd >= 0 && total < kMaxReadPerPass) {
      const ssize_t n = read(*fd, buf, sizeof(buf));
      if (n > 0) {
        tail.Append(buf, static_cast<size_t>(n));
        total += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      CloseFd(fd);  // EOF (or an error: nothing more will come)
    }
  }
  if (p->out_fd < 0 && p->err_fd < 0 && p->pipes_closed_us == 0) p->pipes_closed_us = now_us_();
}

std::optional<ExecutableOutcome> ExecutableRunner::TryFinish(Proc* p, int64_t now) {
  if (!p->wait_status) {
    int status = 0;
    pid_t r;
    do {
      r = waitpid(p->pid, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0) return std::nullopt;
    p->wait_status = r == p->pid ? status : -1;
  }
  // The program is gone; whatever it left running in its group goes too, so
  // a task leaves no stray processes (and no one holds its pipes open).
  killpg(p->pid, SIGKILL);
  ReadAvailable(p);
  CloseFd(&p->out_fd);
  CloseFd(&p->err_fd);
  const std::optional<common::ChildFailure> failure = common::ReadChildFailure(p->report_fd);
  CloseFd(&p->report_fd);
  CloseFd(&p->pid_fd);

  ExecutableOutcome o;
  o.task_id = p->task_id;
  o.pid = p->pid;
  o.start_us = p->start_us;
  o.end_us = now;
  o.killed_by_request = p->killed;
  if (failure) {
    const int err = failure->err;
    o.outcome = v1::SYSTEM_ERROR;
    switch (failure->step) {
      case common::SpawnStep::kChdir:
        o.error = absl::StrCat("cannot start '", p->argv0, "': cannot change to its working "
                               "directory: ", strerror(err));
        break;
      case common::SpawnStep::kExec:
        o.error = absl::StrCat("cannot execute '", p->argv0, "': ", strerror(err));
        break;
      case common::SpawnStep::kAffinity:
        o.error = absl::StrCat("cannot start '", p->argv0, "' on its granted CPUs: ",
                               strerror(err));
        break;
      default:
        o.error = absl::StrCat("cannot start '", p->argv0, "': ", strerror(err));
        break;
    }
    return o;
  }
  const int status = *p->wait_status;
  v1::ExecutableResult result;
  if (status != -1 && WIFEXITED(status)) {
    result.set_exit_code(WEXITSTATUS(status));
  } else {
    result.set_exit_code(-1);
    if (status != -1 && WIFSIGNALED(status)) {
      result.set_signal(WTERMSIG(status));
      if (!p->killed && !p->timed_out) o.external_signal = WTERMSIG(status);
    }
  }
  result.set_stdout_bytes(p->out.total());
  result.set_stderr_bytes(p->err.total());
  result.set_stdout_tail(p->out.Take());
  result.set_stderr_tail(p->err.Take());
  result.set_wall_us(now - p->start_us);
  result.set_timed_out(p->timed_out);
  if (!p->timed_out && status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    o.outcome = v1::OK;
  } else {
    o.outcome = v1::APP_EXCEPTION;
    o.error = p->timed_out
                  ? absl::StrCat("'", p->argv0, "' (pid ", p->pid, ") timed out after ",
                                 p->timeout_s, " s; its process group was killed")
                  : absl::StrCat("'", p->argv0, "' (pid ", p->pid, ") ", DescribeExit(status));
  }
  o.data = result.SerializeAsString();
  return o;
}

std::vector<ExecutableOutcome> ExecutableRunner::Collect() {
  std::vector<ExecutableOutcome> done;
  if (procs_.empty()) return done;
  const int64_t now = now_us_();
  for (auto it = procs_.begin(); it != procs_.end();) {
    Proc* p = it->second.get();
    ReadAvailable(p);
    if (p->deadline_us != 0 && now >= p->deadline_us && !p->timed_out && !p->wait_status) {
      p->timed_out = true;
      killpg(p->pid, SIGKILL);
    }
    std::optional<ExecutableOutcome> o = TryFinish(p, now);
    if (o) {
      done.push_back(std::move(*o));
      it = procs_.erase(it);
    } else {
      ++it;
    }
  }
  return done;
}

std::optional<int64_t> ExecutableRunner::NextWakeUs() const {
  std::optional<int64_t> next;
  auto consider = [&next](int64_t t) {
    if (!next || t < *next) next = t;
  };
  const int64_t now = procs_.empty() ? 0 : now_us_();
  for (const auto& [id, p] : procs_) {
    if (p->deadline_us != 0 && !p->timed_out) consider(p->deadline_us);
    if (p->pid_fd >= 0) continue;  // its exit wakes the poll
    if (p->timed_out || p->killed) consider(now + kExitRecheckUs);
    if (p->pipes_closed_us != 0) {
      consider(now + (now - p->pipes_closed_us < kSlowAfterUs ? kExitRecheckUs
                                                                : kSlowExitRecheckUs));
    }
  }
  return next;
}

}  // namespace dragon::agent
