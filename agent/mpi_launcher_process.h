// Starting an MPI job's launcher process (mpiexec, srun or a user's
// command): vfork/exec in the job's cwd, in its own process group (so that
// cancel can end all of it at once), with PR_SET_PDEATHSIG (so that it dies
// with the agent), its stdin a pipe for rank 0's input, its output appended
// to files of the job's directory.
#ifndef DRAGON_AGENT_MPI_LAUNCHER_PROCESS_H_
#define DRAGON_AGENT_MPI_LAUNCHER_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/agent.pb.h"

namespace dragon::agent {

// The launcher's environment ("NAME=value"): the agent's, with the spec's
// variables and DRAGON_MPI_TASK=`marker` in place of same-named ones.
std::vector<std::string> LauncherEnvironment(const v1::ExecutableSpec& spec,
                                             const std::string& marker);

struct LauncherProcess {
  pid_t pid = 0;      // also its process group
  int stdin_fd = -1;  // the write end of its stdin pipe, non-blocking; the caller's
};

// Starts `path` (resolved already) with `argv` and `env` in `cwd` ("" = the
// agent's). Its stdout is appended to `stdout_path`, its stderr to
// `stderr_path` ("" = the same open file as stdout). An error means nothing
// was started.
absl::StatusOr<LauncherProcess> SpawnLauncher(const std::string& path,
                                              std::vector<std::string> argv,
                                              std::vector<std::string> env,
                                              const std::string& cwd,
                                              const std::string& stdout_path,
                                              const std::string& stderr_path);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_LAUNCHER_PROCESS_H_
