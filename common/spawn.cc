#include "common/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dragon::common {
namespace {

// The child moves the fds it needs to 10 and above before dup2-ing them onto
// their targets (a source may itself be one of the targets), so at most 10
// targets.
constexpr int kFirstMovedFd = 10;
constexpr size_t kMaxChildFds = kFirstMovedFd;

// Everything the child reads, prepared by the parent (no allocation after fork).
struct Plan {
  pid_t parent;
  const char* path;
  bool search_path;
  char* const* argv;
  char* const* envp;
  const char* cwd;
  SpawnSpec::Group group;
  const cpu_set_t* cpus;  // nullptr: no pinning
  int death_signal;
  const int* default_signals;
  size_t num_default_signals;
  const int* sources;  // sources[i]: what becomes fd i; -1 = left as is
  size_t num_fds;
  SpawnSpec::OtherFds other_fds;
  int close_limit;  // how far the fallback loops go without close_range
  int report_fd;    // -1: none
  ChildFailureNote note;
  int parent_gone_exit_code, setup_exit_code, exec_exit_code;
};

// Async-signal-safe: what the parent reads with ReadChildFailure or kWait.
[[noreturn]] void Fail(const Plan& plan, int report_fd, SpawnStep step, int err, int exit_code) {
  if (report_fd >= 0) {
    char msg[1 + sizeof(int)];
    msg[0] = static_cast<char>(step);
    memcpy(msg + 1, &err, sizeof(int));
    (void)!write(report_fd, msg, sizeof(msg));
  }
  if (plan.note != nullptr) plan.note(step, err, plan.argv[0]);
  _exit(exit_code);
}

// Closes (or marks close-on-exec) fds [first, last].
void CloseRange(unsigned first, unsigned last, bool cloexec, int limit) {
  if (first > last) return;
  if (close_range(first, last, cloexec ? CLOSE_RANGE_CLOEXEC : 0) == 0) return;
  // Kernels before 5.9: one by one, up to the fd limit.
  for (int fd = static_cast<int>(first); fd < limit && static_cast<unsigned>(fd) <= last; ++fd) {
    if (cloexec) {
      fcntl(fd, F_SETFD, FD_CLOEXEC);
    } else {
      close(fd);
    }
  }
}

// The child, after fork or vfork: only syscalls, and no writes to memory
// other than its own stack (after vfork it shares the parent's memory).
// Order: death signal, process group, affinity, signals, fds, cwd, exec.
[[noreturn]] void RunChild(const Plan& plan) {
  if (plan.death_signal != 0) {
    // Die with the parent; if it is already gone, do not start at all.
    if (prctl(PR_SET_PDEATHSIG, plan.death_signal) != 0 || getppid() != plan.parent) {
      _exit(plan.parent_gone_exit_code);
    }
  }
  // Own group (also set by the parent, whichever runs first): a Ctrl-C aimed
  // at the parent's group must not reach it, and a kill of its group reaches
  // all it starts.
  if (plan.group == SpawnSpec::Group::kNewGroup) setpgid(0, 0);
  if (plan.group == SpawnSpec::Group::kNewSession) setsid();
  int report_fd = plan.report_fd;
  // Its CPUs before anything else runs there (inherited by all it starts).
  if (plan.cpus != nullptr && sched_setaffinity(0, sizeof(cpu_set_t), plan.cpus) != 0) {
    Fail(plan, report_fd, SpawnStep::kAffinity, errno, plan.setup_exit_code);
  }
  // The mask and ignored dispositions survive exec; the daemons block or
  // ignore signals the program must get.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (size_t i = 0; i < plan.num_default_signals; ++i) signal(plan.default_signals[i], SIG_DFL);

  // Move every source (and the report pipe) to 10 and above first: one may
  // itself be a target, and dup2 onto it would clobber it.
  int moved[kMaxChildFds];
  for (size_t i = 0; i < plan.num_fds; ++i) {
    moved[i] = -1;
    if (plan.sources[i] < 0) continue;
    moved[i] = fcntl(plan.sources[i], F_DUPFD_CLOEXEC, kFirstMovedFd);
    if (moved[i] < 0) Fail(plan, report_fd, SpawnStep::kMoveFds, errno, plan.setup_exit_code);
  }
  if (report_fd >= 0 && report_fd < static_cast<int>(plan.num_fds)) {
    const int up = fcntl(report_fd, F_DUPFD_CLOEXEC, kFirstMovedFd);
    if (up < 0) Fail(plan, report_fd, SpawnStep::kMoveFds, errno, plan.setup_exit_code);
    report_fd = up;
  }
  // dup2 clears close-on-exec on the target: exactly the targets survive exec.
  for (size_t i = 0; i < plan.num_fds; ++i) {
    if (moved[i] >= 0 && dup2(moved[i], static_cast<int>(i)) < 0) {
      Fail(plan, report_fd, SpawnStep::kSetup, errno, plan.setup_exit_code);
    }
  }
  // Nothing of the parent's (pipes of other children, sockets) may leak into
  // the program; the report pipe closes by itself when exec succeeds.
  const unsigned first = static_cast<unsigned>(plan.num_fds);
  switch (plan.other_fds) {
    case SpawnSpec::OtherFds::kCloseOnExec:
      CloseRange(first, ~0U, true, plan.close_limit);
      break;
    case SpawnSpec::OtherFds::kClose:
      if (report_fd < 0) {
        CloseRange(first, ~0U, false, plan.close_limit);
      } else {
        CloseRange(first, static_cast<unsigned>(report_fd) - 1, false, plan.close_limit);
        CloseRange(static_cast<unsigned>(report_fd) + 1, ~0U, false, plan.close_limit);
      }
      break;
    case SpawnSpec::OtherFds::kLeave:
      break;
  }
  if (plan.cwd[0] != '\0' && chdir(plan.cwd) != 0) {
    Fail(plan, report_fd, SpawnStep::kChdir, errno, plan.setup_exit_code);
  }
  if (plan.search_path) {
    execvpe(plan.path, plan.argv, plan.envp);
  } else {
    execve(plan.path, plan.argv, plan.envp);
  }
  Fail(plan, report_fd, SpawnStep::kExec, errno, plan.exec_exit_code);
}

void CloseIfOpen(int* fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

}  // namespace

absl::StatusOr<Spawned> Spawn(const SpawnSpec& spec, SpawnError* error) {
  SpawnError ignored;
  if (error == nullptr) error = &ignored;
  *error = SpawnError{};
  if (spec.path.empty() || spec.argv.empty()) return absl::InvalidArgumentError("empty command");
  if (spec.fds.size() > kMaxChildFds) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", kMaxChildFds, " child fds"));
  }

  // argv, envp, signals and the CPU set live in this frame until exec.
  std::vector<std::string> argv_strings(spec.argv);
  std::vector<char*> argv;
  argv.reserve(argv_strings.size() + 1);
  for (auto& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings(spec.env);
  std::vector<char*> envp;
  envp.reserve(env_strings.size() + 1);
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  cpu_set_t cpu_set;
  CPU_ZERO(&cpu_set);
  for (int c : spec.cpus) {
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &cpu_set);
  }

  // The fds the child takes over; those opened here are closed on return.
  std::vector<int> sources(spec.fds.size(), -1);
  std::vector<int> opened;
  int report[2] = {-1, -1};
  auto cleanup = [&] {
    for (int& fd : opened) CloseIfOpen(&fd);
    CloseIfOpen(&report[0]);
    CloseIfOpen(&report[1]);
  };
  for (size_t i = 0; i < spec.fds.size(); ++i) {
    const ChildFd& f = spec.fds[i];
    switch (f.kind) {
      case ChildFd::kInherit:
        break;
      case ChildFd::kFd:
        sources[i] = f.fd;
        break;
      case ChildFd::kDevNull: {
        const int fd = open("/dev/null", f.flags | O_CLOEXEC);
        if (fd < 0) {
          *error = {SpawnError::kOpen, errno};
          const absl::Status s =
              absl::InternalError(absl::StrCat("cannot open /dev/null: ", strerror(errno)));
          cleanup();
          return s;
        }
        opened.push_back(fd);
        sources[i] = fd;
        break;
      }
      case ChildFd::kAppendFile: {
        const int flags = O_WRONLY | O_APPEND | O_CLOEXEC | (f.create_mode != 0 ? O_CREAT : 0);
        const int fd = open(f.path.c_str(), flags, f.create_mode);
        if (fd < 0) {
          *error = {SpawnError::kOpen, errno};
          const absl::Status s =
              absl::InternalError(absl::StrCat("cannot open ", f.path, ": ", strerror(errno)));
          cleanup();
          return s;
        }
        opened.push_back(fd);
        sources[i] = fd;
        break;
      }
    }
  }
  // The child reports a failed step through this close-on-exec pipe.
  if (spec.report != ChildReport::kNone) {
    if (pipe2(report, O_CLOEXEC) != 0) {
      *error = {SpawnError::kPipe, errno};
      const absl::Status s = absl::InternalError(absl::StrCat("pipe failed: ", strerror(errno)));
      cleanup();
      return s;
    }
    if (spec.report == ChildReport::kDeferred) {
      fcntl(report[0], F_SETFL, fcntl(report[0], F_GETFL) | O_NONBLOCK);
    }
  }
  // Only the fallback for kernels without close_range uses it.
  int close_limit = 4096;
  if (spec.other_fds == SpawnSpec::OtherFds::kClose) {
    struct rlimit nofile {};
    close_limit = 65536;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY &&
        nofile.rlim_cur < 65536) {
      close_limit = static_cast<int>(nofile.rlim_cur);
    }
  }

  Plan plan{};
  plan.parent = getpid();
  plan.path = spec.path.c_str();
  plan.search_path = spec.search_path;
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.cwd = spec.cwd.c_str();
  plan.group = spec.group;
  plan.cpus = CPU_COUNT(&cpu_set) > 0 ? &cpu_set : nullptr;
  plan.death_signal = spec.death_signal;
  plan.default_signals = spec.default_signals.data();
  plan.num_default_signals = spec.default_signals.size();
  plan.sources = sources.data();
  plan.num_fds = sources.size();
  plan.other_fds = spec.other_fds;
  plan.close_limit = close_limit;
  plan.report_fd = report[1];
  plan.note = spec.note;
  plan.parent_gone_exit_code = spec.parent_gone_exit_code;
  plan.setup_exit_code = spec.setup_exit_code;
  plan.exec_exit_code = spec.exec_exit_code;

  const pid_t pid = spec.use_vfork ? vfork() : fork();
  if (pid < 0) {
    *error = {SpawnError::kFork, errno};
    const absl::Status s = absl::InternalError(absl::StrCat("fork failed: ", strerror(errno)));
    cleanup();
    return s;
  }
  if (pid == 0) RunChild(plan);
  // Also here, so that a kill of the group right after Spawn reaches it.
  if (spec.group == SpawnSpec::Group::kNewGroup) setpgid(pid, pid);
  Spawned spawned;
  spawned.pid = pid;
  CloseIfOpen(&report[1]);
  if (spec.report == ChildReport::kDeferred) {
    spawned.report_fd = report[0];
    report[0] = -1;
  } else if (spec.report == ChildReport::kWait) {
    // EOF once it exec'd; a ChildFailure if it failed before.
    char msg[1 + sizeof(int)];
    ssize_t n;
    while ((n = read(report[0], msg, sizeof(msg))) < 0 && errno == EINTR) {
    }
    if (n == static_cast<ssize_t>(sizeof(msg))) {
      int err;
      memcpy(&err, msg + 1, sizeof(int));
      int status;
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      *error = {SpawnError::kChild, err, static_cast<SpawnStep>(msg[0])};
      cleanup();
      return absl::NotFoundError(absl::StrCat("cannot run ", spec.argv[0], ": ", strerror(err)));
    }
  }
  cleanup();
  return spawned;
}

std::optional<ChildFailure> ReadChildFailure(int report_fd) {
  if (report_fd < 0) return std::nullopt;
  char msg[1 + sizeof(int)] = {};
  if (read(report_fd, msg, sizeof(msg)) != static_cast<ssize_t>(sizeof(msg))) return std::nullopt;
  ChildFailure failure{static_cast<SpawnStep>(msg[0]), 0};
  memcpy(&failure.err, msg + 1, sizeof(int));
  return failure;
}

absl::StatusOr<std::string> ResolveProgram(const std::string& argv0, const std::string& path_var) {
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

}  // namespace dragon::common
