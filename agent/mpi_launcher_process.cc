#include "agent/mpi_launcher_process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "agent/close_fd.h"
#include "agent/mpi_job_marker.h"
#include "common/spawn.h"

extern char** environ;

namespace dragon::agent {
namespace {

// What the launcher's stderr (the job's file) says when it could not start;
// runs in the child after vfork, so async-signal-safe only. Other setup
// failures exit 126 silently, as they always did.
void LauncherFailureNote(common::SpawnStep step, int /*err*/, const char* /*argv0*/) {
  if (step == common::SpawnStep::kChdir) {
    static const char kMsg[] = "dragon-agent: cannot change to the job's working directory\n";
    (void)!write(2, kMsg, sizeof(kMsg) - 1);
  } else if (step == common::SpawnStep::kExec) {
    static const char kMsg[] = "dragon-agent: cannot execute the MPI launcher\n";
    (void)!write(2, kMsg, sizeof(kMsg) - 1);
  }
}

}  // namespace

std::vector<std::string> LauncherEnvironment(const v1::ExecutableSpec& spec,
                                             const std::string& marker) {
  std::vector<std::string> env_strings;
  auto replaced = [&spec](absl::string_view name) {
    return spec.env().count(std::string(name)) != 0 || name == kMpiTaskMarkerEnv;
  };
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view entry(*e);
    const size_t eq = entry.find('=');
    if (eq != absl::string_view::npos && replaced(entry.substr(0, eq))) continue;
    env_strings.emplace_back(entry);
  }
  for (const auto& [key, value] : spec.env()) env_strings.push_back(absl::StrCat(key, "=", value));
  env_strings.push_back(absl::StrCat(kMpiTaskMarkerEnv, "=", marker));
  return env_strings;
}

absl::StatusOr<LauncherProcess> SpawnLauncher(const std::string& path,
                                              std::vector<std::string> argv,
                                              std::vector<std::string> env,
                                              const std::string& cwd,
                                              const std::string& stdout_path,
                                              const std::string& stderr_path) {
  int in_pipe[2] = {-1, -1};
  int out_fd = -1, err_fd = -1;
  auto cleanup = [&] {
    CloseFd(&in_pipe[0]);
    CloseFd(&in_pipe[1]);
    CloseFd(&out_fd);
    CloseFd(&err_fd);
  };
  if (pipe2(in_pipe, O_CLOEXEC) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("pipe: ", strerror(errno)));
  }
  fcntl(in_pipe[1], F_SETFL, O_NONBLOCK);
  out_fd = open(stdout_path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (!stderr_path.empty()) {
    err_fd = open(stderr_path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  } else {
    err_fd = out_fd >= 0 ? fcntl(out_fd, F_DUPFD_CLOEXEC, 0) : -1;
  }
  if (out_fd < 0 || err_fd < 0) {
    const int err = errno;
    cleanup();
    return absl::InternalError(
        absl::StrCat("cannot open the job's output files in ",
                     std::filesystem::path(stdout_path).parent_path().string(), ": ", strerror(err)));
  }
  common::SpawnSpec spawn;
  spawn.path = path;
  spawn.argv = std::move(argv);
  spawn.env = std::move(env);
  spawn.cwd = cwd;
  // Own group, so that cancel ends all of it at once.
  spawn.group = common::SpawnSpec::Group::kNewGroup;
  spawn.death_signal = SIGKILL;  // it dies with the agent
  spawn.default_signals = {SIGPIPE, SIGTERM, SIGINT, SIGHUP};
  spawn.fds = {common::ChildFd::Dup(in_pipe[0]), common::ChildFd::Dup(out_fd),
               common::ChildFd::Dup(err_fd)};
  spawn.other_fds = common::SpawnSpec::OtherFds::kCloseOnExec;
  // vfork: no copy of the agent's page tables (fork took ~1 ms).
  spawn.use_vfork = true;
  // No report pipe: a failure is the launcher's exit code (126 before
  // exec, 127 at it) and a line in the job's stderr, like any launcher error.
  spawn.report = common::ChildReport::kNone;
  spawn.note = LauncherFailureNote;
  spawn.parent_gone_exit_code = 126;
  spawn.setup_exit_code = 126;
  spawn.exec_exit_code = 127;
  common::SpawnError error;
  absl::StatusOr<common::Spawned> spawned = common::Spawn(spawn, &error);
  if (!spawned.ok()) {
    cleanup();
    if (error.stage == common::SpawnError::kFork) {
      return absl::ResourceExhaustedError(absl::StrCat("fork: ", strerror(error.err)));
    }
    return spawned.status();
  }
  const pid_t pid = spawned->pid;
  LauncherProcess process;
  process.pid = pid;
  process.stdin_fd = in_pipe[1];
  in_pipe[1] = -1;
  cleanup();
  return process;
}

}  // namespace dragon::agent
