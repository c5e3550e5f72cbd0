// The one way dragond's launchers start and watch local processes (a local
// agent, ssh, srun, sbatch...): fork/exec with a prepared environment, output
// appended to a private log file, optional bytes on stdin (how a secret
// reaches a remote command without appearing on any command line), death
// with dragond, and reaping without blocking.
#ifndef DRAGON_DAEMON_LAUNCHERS_CHILD_PROCESS_H_
#define DRAGON_DAEMON_LAUNCHERS_CHILD_PROCESS_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dragon::daemon {

struct ChildSpec {
  std::vector<std::string> argv;  // argv[0]: a path, or a name looked up in PATH
  // Set on top of dragond's own environment.
  std::vector<std::pair<std::string, std::string>> env;
  std::string log_path;    // stdout and stderr are appended here (created 0600); "" = /dev/null
  std::string stdin_data;  // written to its stdin, which is then closed; "" = /dev/null
  bool die_with_parent = true;  // PR_SET_PDEATHSIG(SIGTERM): it does not outlive dragond
};

class ChildProcess {
 public:
  // Starts it; an error names argv[0] and why (not found, not executable, fork failed).
  static absl::StatusOr<ChildProcess> Start(const ChildSpec& spec);

  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();  // does not kill it: callers stop what they started explicitly

  pid_t pid() const { return pid_; }
  // How it ended ("exited with code 2", "was killed by signal 9") once it
  // has, without blocking; nullopt while it runs.
  std::optional<std::string> TryReap();
  // Waits up to `timeout` for it to end.
  std::optional<std::string> WaitFor(absl::Duration timeout);
  // SIGTERM, up to `grace` to end, then SIGKILL; returns how it ended.
  std::string Terminate(absl::Duration grace);
  void Signal(int sig) const;
  bool ended() const { return ended_.has_value(); }
  int exit_code() const { return exit_code_; }  // valid once ended; -1 if killed by a signal

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
  std::optional<std::string> ended_;
  int exit_code_ = -1;
};

// Runs a command to its end (sbatch, squeue, scontrol, ssh HOST kill ...),
// capturing stdout and stderr; kills it after `timeout`.
struct CommandResult {
  int exit_code = -1;  // -1: killed by a signal (or timed out)
  std::string out;
  std::string err;
  bool timed_out = false;
};
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::vector<std::pair<std::string, std::string>>& env,
                                         absl::Duration timeout, const std::string& stdin_data = "");

// The last `max_bytes` of a file (for errors that point at a log).
std::string FileTail(const std::string& path, size_t max_bytes = 2000);

// "a b" -> 'a b' for a POSIX shell (ssh runs the remote command through one).
std::string ShellQuote(const std::string& word);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_CHILD_PROCESS_H_
