// What `dragonctl logs TASK` reads on the agent that ran TASK (the head asks
// with a TaskLogsQuery): an MPI job's per-rank files (MpiLauncher::Logs), an
// executable's captured stdout/stderr tails (kept for the newest
// `keep_executables` ended executables), or, for a Python task, the bytes its
// worker wrote to its log (workers/NODE/worker-SLOT.log) while it ran: the
// pool notes the log's size when it hands the task to the worker and when the
// result comes back (workers run one task at a time and write unbuffered).
// Owned and called by the pool thread; not thread-safe.
#ifndef DRAGON_AGENT_TASK_LOGS_H_
#define DRAGON_AGENT_TASK_LOGS_H_

#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include "proto/agent.pb.h"
#include "proto/common.pb.h"

namespace dragon::agent {

class MpiLauncher;

class TaskLogIndex {
 public:
  TaskLogIndex(std::string host, size_t keep_python = 65536, size_t keep_executables = 256)
      : host_(std::move(host)), keep_python_(keep_python), keep_executables_(keep_executables) {}
  ~TaskLogIndex();
  TaskLogIndex(const TaskLogIndex&) = delete;
  TaskLogIndex& operator=(const TaskLogIndex&) = delete;

  // A worker started in `slot`, writing to `log_path`. The index keeps that
  // file open so that the two sizes noted per task are an fstat each, not a
  // path lookup each (they showed in the agent's profile at ~10k tasks/s).
  void WorkerStarted(int slot, const std::string& log_path);
  // A Python task went to the worker in `slot`.
  void PythonStarted(uint64_t task_id, int slot);
  // Its worker sent the result (or died): the end of its output.
  void PythonEnded(uint64_t task_id);
  // An executable ended; `result_data` is its serialized ExecutableResult.
  void ExecutableEnded(uint64_t task_id, const std::string& result_data);

  // The answer to `query`, looking at `mpi` (may be null) first.
  v1::TaskLogsAnswer Answer(const v1::TaskLogsQuery& query, const MpiLauncher* mpi) const;

 private:
  struct PythonRun {
    int slot = 0;
    uint64_t start = 0;
    uint64_t end = 0;  // 0 = not ended (or nothing noted)
    bool ended = false;
  };
  struct Tails {
    std::string out, err;
    uint64_t out_total = 0, err_total = 0;
  };

  struct SlotLog {
    std::string path;
    int fd = -1;  // read-only; -1 if it could not be opened (sizes are then 0)
  };
  uint64_t SlotLogSize(int slot) const;
  const std::string& SlotLogPath(int slot) const;

  std::string host_;
  std::vector<SlotLog> slots_;
  size_t keep_python_, keep_executables_;
  std::unordered_map<uint64_t, PythonRun> python_;
  std::deque<uint64_t> python_order_;
  std::unordered_map<uint64_t, Tails> executables_;
  std::deque<uint64_t> executable_order_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_TASK_LOGS_H_
