// The one way dragond and dragon-agent start a program (docs/DESIGN.md,
// "processes started"): fork or vfork, then exec, with what the child's fds
// become, its process group, CPU affinity, death signal, signal state and
// working directory given as a spec.
//
// Everything the child needs is allocated before fork/vfork: both daemons are
// multithreaded (gRPC), so the child makes only async-signal-safe calls (no
// malloc, no locks) between fork and exec, and after vfork it must not write
// to the parent's memory either.
#ifndef DRAGON_COMMON_SPAWN_H_
#define DRAGON_COMMON_SPAWN_H_

#include <fcntl.h>
#include <sys/types.h>

#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dragon::common {

// What one of the child's fds becomes.
struct ChildFd {
  enum Kind {
    kInherit,     // left as it is in the parent
    kDevNull,     // /dev/null (opened by Spawn with `flags`, O_RDWR unless told)
    kFd,          // a dup of `fd` (the caller's; Spawn does not close it)
    kAppendFile,  // `path` opened O_WRONLY|O_APPEND (created with `create_mode` unless 0)
  };
  Kind kind = kInherit;
  int fd = -1;
  std::string path;
  int create_mode = 0;
  int flags = 0;  // kDevNull: O_RDONLY, O_WRONLY or O_RDWR

  static ChildFd Inherit() { return {}; }
  static ChildFd DevNull(int flags = O_RDWR) { return {kDevNull, -1, "", 0, flags}; }
  static ChildFd Dup(int fd) { return {kFd, fd}; }
  static ChildFd AppendTo(std::string path, int create_mode) {
    return {kAppendFile, -1, std::move(path), create_mode};
  }
};

// The steps of the child that can fail; the byte it reports for each.
enum class SpawnStep : char {
  kChdir = 'c',
  kExec = 'e',
  kSetup = 's',     // dup2 onto the child's fds
  kMoveFds = 'm',   // moving the fds out of the way first (F_DUPFD)
  kAffinity = 'a',  // sched_setaffinity
};

// How the parent learns that the child failed before or at exec.
enum class ChildReport {
  // Spawn waits until the child has exec'd (or failed): a failure is Spawn's
  // error, naming the program and errno (the child is reaped).
  kWait,
  // Spawn returns at once; Spawned::report_fd (non-blocking, the caller's)
  // holds a ChildFailure once the child failed, EOF once it exec'd.
  kDeferred,
  // No report pipe: the child's exit code (and note, below) tell.
  kNone,
};

struct ChildFailure {
  SpawnStep step;
  int err;
};

// Runs in the child just before it _exits after a failed step, with fd 2
// as it is at that point. Async-signal-safe calls only.
using ChildFailureNote = void (*)(SpawnStep step, int err, const char* argv0);

struct SpawnSpec {
  // The program: a path (execve), or with search_path a name looked up by
  // execvpe in the *parent's* PATH (which also runs shebang-less scripts
  // through /bin/sh). ResolveProgram() resolves with another PATH first.
  std::string path;
  bool search_path = false;
  std::vector<std::string> argv;
  std::vector<std::string> env;  // the child's whole environment, "NAME=value"
  std::string cwd;               // "" = the parent's

  enum class Group { kInherit, kNewGroup, kNewSession };
  Group group = Group::kInherit;
  std::vector<int> cpus;  // CPU numbers to pin to; none (or none valid) = the parent's affinity
  int death_signal = 0;   // PR_SET_PDEATHSIG; 0 = none
  // Signals set back to SIG_DFL (ignored dispositions survive exec); the
  // signal mask is always emptied.
  std::vector<int> default_signals;

  // fds[i] is what fd i becomes (0, 1, 2, and e.g. 3/4 for a worker's pipes).
  std::vector<ChildFd> fds = {ChildFd::Inherit(), ChildFd::Inherit(), ChildFd::Inherit()};
  // The fds above those: closed, marked close-on-exec, or left alone (then
  // only their own O_CLOEXEC keeps them from the program).
  enum class OtherFds { kCloseOnExec, kClose, kLeave };
  OtherFds other_fds = OtherFds::kCloseOnExec;

  // vfork shares the parent's memory until exec: no page tables are copied
  // (fork of a big multithreaded daemon takes ~1 ms). fork otherwise.
  bool use_vfork = false;
  ChildReport report = ChildReport::kWait;
  ChildFailureNote note = nullptr;
  int parent_gone_exit_code = 1;  // the parent died before the death signal was set
  int setup_exit_code = 127;      // chdir, fds, affinity failed
  int exec_exit_code = 127;
};

struct Spawned {
  pid_t pid = -1;
  int report_fd = -1;  // ChildReport::kDeferred only; the caller closes it
};

// Why Spawn failed, for callers whose error texts differ from Spawn's own.
struct SpawnError {
  enum Stage { kNone, kOpen, kPipe, kFork, kChild };
  Stage stage = kNone;
  int err = 0;
  SpawnStep step = SpawnStep::kExec;  // with kChild
};

// Starts spec. Errors (nothing runs then; the parent's fds are as before):
// an empty path/argv (InvalidArgument), "cannot open PATH: ..." (Internal)
// for a kAppendFile, "pipe failed: ..." / "fork failed: ..." (Internal), and
// with ChildReport::kWait "cannot run ARGV0: <strerror>" (NotFound).
absl::StatusOr<Spawned> Spawn(const SpawnSpec& spec, SpawnError* error = nullptr);

// Reads a report fd (ChildReport::kDeferred): the failure, if the child
// reported one. Call it once the child has exited.
std::optional<ChildFailure> ReadChildFailure(int report_fd);

// argv0 resolved as execvp would, with `path_var` (the program's PATH):
// NotFound "cannot execute 'ARGV0': <strerror>[ (searched PATH=...)]".
absl::StatusOr<std::string> ResolveProgram(const std::string& argv0, const std::string& path_var);

}  // namespace dragon::common

#endif  // DRAGON_COMMON_SPAWN_H_
