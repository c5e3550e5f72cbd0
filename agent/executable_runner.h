// Runs EXECUTABLE tasks (payload = v1::ExecutableSpec) straight from the
// agent, without Python: fork/exec with stdout/stderr on pipes (bounded
// tails kept), stdin /dev/null, PR_SET_PDEATHSIG(SIGKILL), its own process
// group (cancel and timeout kill the whole group), and the rest of the group
// killed once the main process exits, so a task leaves nothing behind.
//
// Never blocks: Start() forks and returns (an exec failure arrives later,
// through a close-on-exec error pipe), output is read when poll says so, and
// exits are found by waitpid(WNOHANG). Driven by one thread (the pool
// thread, which must outlive the children: PDEATHSIG fires when the forking
// thread exits). Not thread-safe.
#ifndef DRAGON_AGENT_EXECUTABLE_RUNNER_H_
#define DRAGON_AGENT_EXECUTABLE_RUNNER_H_

#include <poll.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/common.pb.h"

namespace dragon::agent {

inline constexpr uint32_t kDefaultCaptureLimitBytes = 64u << 10;
inline constexpr uint32_t kMaxCaptureLimitBytes = 64u << 20;

// How an executable task ended.
struct ExecutableOutcome {
  uint64_t task_id = 0;
  // OK (exit 0), APP_EXCEPTION (non-zero exit, signal or timeout) with
  // `data` = serialized ExecutableResult, or SYSTEM_ERROR when it could not
  // be started (`error` says why; no task/node prefix, the caller adds it).
  v1::Outcome outcome = v1::OUTCOME_UNSPECIFIED;
  std::string data;
  std::string error;
  int pid = 0;
  int64_t start_us = 0;
  int64_t end_us = 0;
  bool killed_by_request = false;  // Kill() was called for it
  // The signal that killed it when the runner did not send it (neither Kill()
  // nor its timeout): a stop signal here may be the whole job's end
  // (held_reports.h).
  int external_signal = 0;
};

class ExecutableRunner {
 public:
  using Clock = int64_t (*)();  // microseconds since the Unix epoch

  explicit ExecutableRunner(Clock now_us);
  ~ExecutableRunner();  // SIGKILLs and reaps whatever still runs

  // Starts task.payload() (an ExecutableSpec) in task.cwd() unless the spec
  // names its own cwd. Returns the pid; an error (bad spec, argv[0] not
  // found or not executable, fork failure) means nothing was started.
  absl::StatusOr<int> Start(const v1::TaskAssignment& task);
  // The same, pinned to `cpus` (CPU numbers; empty: the agent's affinity)
  // and with `env` set on top of the agent's and the spec's environment (a
  // grant's variables win over the spec's).
  absl::StatusOr<int> Start(const v1::TaskAssignment& task, const std::vector<int>& cpus,
                            const std::vector<std::pair<std::string, std::string>>& env);

  // SIGKILLs the task's process group and every descendant that left it;
  // its end is still reported by Collect() (with killed_by_request set).
  // Unknown ids are ignored.
  void Kill(uint64_t task_id);

  // The fds to poll for input; Collect() reads whatever is readable.
  void AppendPollFds(std::vector<pollfd>* fds) const;
  // Reads available output, enforces timeouts, reaps exits; returns the
  // tasks that ended.
  std::vector<ExecutableOutcome> Collect();
  // The next time Collect() must run even without input (a timeout, or a
  // prompt re-check of a process whose pipes are closed), if any.
  std::optional<int64_t> NextWakeUs() const;

  size_t running() const { return procs_.size(); }
  bool Owns(uint64_t task_id) const { return procs_.count(task_id) != 0; }

 private:
  struct Proc;

  void ReadAvailable(Proc* p);
  std::optional<ExecutableOutcome> TryFinish(Proc* p, int64_t now);

  Clock now_us_;
  std::map<uint64_t, std::unique_ptr<Proc>> procs_;  // by task id
};

// Keeps the last `limit` bytes of a stream (what ExecutableResult's tails hold).
class TailBuffer {
 public:
  explicit TailBuffer(size_t limit) : limit_(limit) {}
  void Append(const char* data, size_t n);
  std::string Take();  // the last `limit` bytes, in order
  uint64_t total() const { return total_; }

 private:
  size_t limit_;
  std::string buf_;
  uint64_t total_ = 0;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_EXECUTABLE_RUNNER_H_
