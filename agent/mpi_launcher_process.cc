#include "agent/mpi_launcher_process.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "agent/close_fd.h"
#include "agent/mpi_job_marker.h"

extern char** environ;

namespace dragon::agent {
namespace {

// Async-signal-safe child after vfork.
[[noreturn]] void RunLauncher(pid_t parent, int in_fd, int out_fd, int err_fd, const char* cwd,
                              const char* path, char* const* argv, char* const* envp) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(126);
  setpgid(0, 0);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig : {SIGPIPE, SIGTERM, SIGINT, SIGHUP}) signal(sig, SIG_DFL);
  int fds[3] = {in_fd, out_fd, err_fd};
  for (int& fd : fds) {
    fd = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    if (fd < 0) _exit(126);
  }
  if (dup2(fds[0], 0) < 0 || dup2(fds[1], 1) < 0 || dup2(fds[2], 2) < 0) _exit(126);
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < 4096; ++fd) fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  if (cwd[0] != '\0' && chdir(cwd) != 0) {
    static const char kMsg[] = "dragon-agent: cannot change to the job's working directory\n";
    (void)!write(2, kMsg, sizeof(kMsg) - 1);
    _exit(126);
  }
  execve(path, argv, envp);
  static const char kMsg[] = "dragon-agent: cannot execute the MPI launcher\n";
  (void)!write(2, kMsg, sizeof(kMsg) - 1);
  _exit(127);
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
  // Prepared before vfork: the child may not allocate.
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<char*> cargv;
  for (auto& s : argv) cargv.push_back(s.data());
  cargv.push_back(nullptr);

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
  const pid_t parent = getpid();
  const pid_t pid = vfork();
  if (pid < 0) {
    const int err = errno;
    cleanup();
    return absl::ResourceExhaustedError(absl::StrCat("fork: ", strerror(err)));
  }
  if (pid == 0) {
    RunLauncher(parent, in_pipe[0], out_fd, err_fd, cwd.c_str(), path.c_str(), cargv.data(),
                envp.data());
  }
  setpgid(pid, pid);
  LauncherProcess process;
  process.pid = pid;
  process.stdin_fd = in_pipe[1];
  in_pipe[1] = -1;
  cleanup();
  return process;
}

}  // namespace dragon::agent
