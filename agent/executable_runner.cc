#include "agent/executable_runner.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/process_tree.h"
#include "agent/worker_process.h"

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

// What the child reports through the error pipe before _exit(127).
enum ChildStage : char {
  kStageChdir = 'c',
  kStageExec = 'e',
  kStageSetup = 's',
  kStageAffinity = 'a'
};

void CloseFd(int* fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

// Async-signal-safe: the agent is multithreaded, the child may not allocate.
[[noreturn]] void ChildFail(int err_fd, char stage, int err) {
  char msg[1 + sizeof(int)];
  msg[0] = stage;
  memcpy(msg + 1, &err, sizeof(int));
  (void)!write(err_fd, msg, sizeof(msg));
  _exit(127);
}

[[noreturn]] void RunChild(pid_t parent, int null_fd, int out_fd, int err_fd, int report_fd,
                           const char* cwd, const char* path, char* const* argv,
                           char* const* envp, const cpu_set_t* cpus) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(1);
  setpgid(0, 0);  // also done by the parent, whichever runs first
  // Its grant's CPUs (inherited by everything it starts).
  if (cpus != nullptr && sched_setaffinity(0, sizeof(cpu_set_t), cpus) != 0) {
    ChildFail(report_fd, kStageAffinity, errno);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig : {SIGPIPE, SIGTERM, SIGINT, SIGHUP}) signal(sig, SIG_DFL);
  // Move the fds above 2 first so that dup2 cannot clobber one of them.
  int fds[4] = {null_fd, out_fd, err_fd, report_fd};
  for (int& fd : fds) {
    fd = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    if (fd < 0) ChildFail(report_fd, kStageSetup, errno);
  }
  report_fd = fds[3];
  if (dup2(fds[0], 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[2], 2) < 0) {
    ChildFail(report_fd, kStageSetup, errno);
  }
  // Nothing of the agent's (worker pipes, sockets) may leak into the
  // program; the report pipe closes by itself when exec succeeds.
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < 4096; ++fd) fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  if (cwd[0] != '\0' && chdir(cwd) != 0) ChildFail(report_fd, kStageChdir, errno);
  execve(path, argv, envp);
  ChildFail(report_fd, kStageExec, errno);
}

// argv0 resolved like execvp would, with `path_var` (the program's PATH).
// Error text names argv0 and the errno text.
absl::StatusOr<std::string> Resolve(const std::string& argv0, const std::string& path_var) {
  if (argv0.find('/') != std::string::npos) {
    if (access(argv0.c_str(), X_OK) != 0) {
      return absl::NotFoundError(absl::StrCat("cannot execute '", argv0, "': ", strerror(errno)));
    }
    return argv0;
  }
  int first_err = ENOENT;
  for (absl::string_view dir : absl::StrSplit(path_var, ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", argv0);
    struct stat st {};
    if (stat(candidate.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    first_err = errno;
  }
  return absl::NotFoundError(absl::StrCat("cannot execute '", argv0, "': ", strerror(first_err),
                                          " (searched PATH=", path_var, ")"));
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
  // Everything the child needs is prepared before fork (no allocation after).
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
  cpu_set_t cpu_set;
  CPU_ZERO(&cpu_set);
  for (int c : cpus) {
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &cpu_set);
  }
  const cpu_set_t* pin = CPU_COUNT(&cpu_set) > 0 ? &cpu_set : nullptr;
  std::string path_var;
  if (auto it = spec.env().find("PATH"); it != spec.env().end()) {
    path_var = it->second;
  } else if (const char* p = getenv("PATH"); p != nullptr) {
    path_var = p;
  } else {
    path_var = "/usr/local/bin:/usr/bin:/bin";
  }
  absl::StatusOr<std::string> path = Resolve(spec.argv(0), path_var);
  if (!path.ok()) return path.status();

  std::vector<char*> envp;
  envp.reserve(env_strings.size() + 1);
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_strings(spec.argv().begin(), spec.argv().end());
  std::vector<char*> argv;
  for (auto& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  const std::string cwd = spec.cwd().empty() ? task.cwd() : spec.cwd();

  const uint32_t limit = spec.capture_limit_bytes() == 0
                             ? kDefaultCaptureLimitBytes
                             : std::min(spec.capture_limit_bytes(), kMaxCaptureLimitBytes);
  auto proc = std::make_unique<Proc>(limit);
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, report_pipe[2] = {-1, -1};
  auto cleanup = [&] {
    CloseFd(&null_fd);
    for (int* fd : {&out_pipe[0], &out_pipe[1], &err_pipe[0], &err_pipe[1], &report_pipe[0],
                    &report_pipe[1]}) {
      CloseFd(fd);
    }
  };
  if (null_fd < 0 || pipe2(out_pipe, O_CLOEXEC | O_NONBLOCK) != 0 ||
      pipe2(err_pipe, O_CLOEXEC | O_NONBLOCK) != 0 ||
      pipe2(report_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    const int err = errno;
    cleanup();
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start '", spec.argv(0), "': pipes: ", strerror(err)));
  }
  // The child's ends must block (a program expects ordinary stdout).
  fcntl(out_pipe[1], F_SETFL, 0);
  fcntl(err_pipe[1], F_SETFL, 0);
  fcntl(report_pipe[1], F_SETFL, 0);

  const pid_t parent = getpid();
  // vfork: the child shares our memory until it execs, so no page tables
  // are copied (fork of the agent, gRPC threads and all, took ~1 ms here).
  // Everything it touches was prepared above, and it only makes syscalls.
  const pid_t pid = vfork();
  if (pid < 0) {
    const int err = errno;
    cleanup();
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start '", spec.argv(0), "': fork: ", strerror(err)));
  }
  if (pid == 0) {
    RunChild(parent, null_fd, out_pipe[1], err_pipe[1], report_pipe[1], cwd.c_str(),
             path->c_str(), argv.data(), envp.data(), pin);
  }
  // Also here, so a Kill() right after Start() reaches the whole group.
  setpgid(pid, pid);
  proc->task_id = task.task_id();
  proc->pid = pid;
  proc->argv0 = spec.argv(0);
  proc->out_fd = out_pipe[0];
  proc->err_fd = err_pipe[0];
  proc->report_fd = report_pipe[0];
  out_pipe[0] = err_pipe[0] = report_pipe[0] = -1;
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
  char report[1 + sizeof(int)] = {};
  const ssize_t got = p->report_fd >= 0 ? read(p->report_fd, report, sizeof(report)) : 0;
  CloseFd(&p->report_fd);
  CloseFd(&p->pid_fd);

  ExecutableOutcome o;
  o.task_id = p->task_id;
  o.pid = p->pid;
  o.start_us = p->start_us;
  o.end_us = now;
  o.killed_by_request = p->killed;
  if (got == static_cast<ssize_t>(sizeof(report))) {
    int err;
    memcpy(&err, report + 1, sizeof(int));
    o.outcome = v1::SYSTEM_ERROR;
    switch (report[0]) {
      case kStageChdir:
        o.error = absl::StrCat("cannot start '", p->argv0, "': cannot change to its working "
                               "directory: ", strerror(err));
        break;
      case kStageExec:
        o.error = absl::StrCat("cannot execute '", p->argv0, "': ", strerror(err));
        break;
      case kStageAffinity:
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
    if (status != -1 && WIFSIGNALED(status)) result.set_signal(WTERMSIG(status));
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
