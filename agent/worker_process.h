// One Python worker process of dragon-agent: fork/exec with the pipe fds of
// docs/INTERFACES.md ("Worker pipe protocol"), signals and reaping.
#ifndef DRAGON_AGENT_WORKER_PROCESS_H_
#define DRAGON_AGENT_WORKER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dragon::agent {

struct WorkerSpec {
  // argv[0], looked up in PATH when it has no slash; e.g. {"python3", "-m", "dragon_parsl.worker"}.
  std::vector<std::string> argv;
  // stdout and stderr of the worker are appended to this file (created if missing).
  std::string log_path;
  // Added to (or replacing entries of) the agent's own environment.
  std::vector<std::pair<std::string, std::string>> env;
};

// What a waitpid() status means, for people: "exited with code 3",
// "killed by signal 9 SIGKILL" (this exact form is part of the task error text
// in docs/INTERFACES.md).
std::string DescribeExit(int wait_status);

// A started worker. The agent side of its pipes is nonblocking and
// close-on-exec (so no other worker inherits them and hides an EOF).
// Destroying a WorkerProcess that is still running SIGKILLs and reaps it:
// a worker never outlives its owner, and never stays a zombie.
class WorkerProcess {
 public:
  // Forks and execs spec.argv with fd 3 = read end of agent->worker pipe,
  // fd 4 = write end of worker->agent pipe, fds 1/2 appended to spec.log_path,
  // stdin /dev/null, PR_SET_PDEATHSIG(SIGKILL). An exec failure shows up as
  // exit code 127 with the reason written to the log file.
  //
  // PR_SET_PDEATHSIG fires when the *thread* that forked exits, so call this
  // from a thread that lives as long as the workers (the pool thread).
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(const WorkerSpec& spec);

  ~WorkerProcess();
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  pid_t pid() const { return pid_; }
  int to_worker_fd() const { return to_worker_fd_; }      // -1 once closed
  int from_worker_fd() const { return from_worker_fd_; }  // -1 once closed
  void CloseToWorker();
  void CloseFromWorker();

  // Sends a signal unless the process has already been reaped.
  absl::Status Signal(int sig);

  // Reaps without blocking; the wait status once the process has exited.
  std::optional<int> TryReap();
  // Blocks until the process has exited; its wait status.
  int Wait();
  bool reaped() const { return wait_status_.has_value(); }
  std::optional<int> wait_status() const { return wait_status_; }

 private:
  WorkerProcess(pid_t pid, int to_fd, int from_fd)
      : pid_(pid), to_worker_fd_(to_fd), from_worker_fd_(from_fd) {}

  pid_t pid_;
  int to_worker_fd_;
  int from_worker_fd_;
  std::optional<int> wait_status_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_WORKER_PROCESS_H_
