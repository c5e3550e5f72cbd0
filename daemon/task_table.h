// The head's record of every task of the run: state, where it ran, and the
// time of each transition. Not thread-safe: the Head serialises access.
#ifndef DRAGON_DAEMON_TASK_TABLE_H_
#define DRAGON_DAEMON_TASK_TABLE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/head.pb.h"

namespace dragon::daemon {

using TaskId = uint64_t;
using SessionId = uint64_t;
// Index of an agent in the head's registry; kNoAgent when none.
using AgentIndex = int32_t;
inline constexpr AgentIndex kNoAgent = -1;

// One task. Laid out for a deep queue: a million queued tasks cost this
// struct (~150 bytes) plus their payload, nothing per task elsewhere in the
// table (bench/HEAD_SCALE.md).
struct Task {
  TaskId id = 0;
  SessionId session = 0;
  uint64_t client_ref = 0;
  uint64_t payload_bytes = 0;
  // Kept until the task ends so a task on a lost node can be re-queued.
  std::string payload;
  std::string error;
  // For people (the app's name); interned by the table: tasks of one app
  // share one string.
  const std::string* name = nullptr;
  int64_t submitted_us = 0;
  int64_t scheduled_us = 0;
  int64_t running_us = 0;
  int64_t finished_us = 0;
  dragon::v1::TaskState state = dragon::v1::PENDING;
  dragon::v1::TaskKind kind = dragon::v1::PYTHON;
  dragon::v1::Outcome outcome = dragon::v1::OUTCOME_UNSPECIFIED;
  AgentIndex agent = kNoAgent;
  int32_t worker_pid = 0;

  const std::string& name_or_empty() const;
};

bool IsTerminal(dragon::v1::TaskState state);

// Whether the service may move a task from `from` to `to`.
bool IsAllowedTransition(dragon::v1::TaskState from, dragon::v1::TaskState to);

class TaskTable {
 public:
  // Adds a PENDING task and returns its id (ids count up from 1).
  TaskId Add(dragon::v1::TaskKind kind, std::string name, SessionId session,
             uint64_t client_ref, std::string payload, int64_t now_us);

  Task* Find(TaskId id);
  const Task* Find(TaskId id) const;

  // Moves a task to `to`, stamping the transition time. Refuses (without
  // change) transitions that cannot happen, e.g. out of a terminal state.
  absl::Status Transition(TaskId id, dragon::v1::TaskState to, int64_t now_us);

  uint64_t CountInState(dragon::v1::TaskState state) const;
  uint64_t size() const { return size_; }

  // Tasks in `state` (all states for TASK_STATE_UNSPECIFIED), newest first,
  // at most `limit`; `total` receives the number that matched (from the
  // per-state counts: the scan stops once `limit` are found, so listing the
  // newest tasks of a million costs `limit` steps, not a million).
  std::vector<const Task*> List(dragon::v1::TaskState state, size_t limit,
                                uint64_t* total) const;

  // Every non-terminal task of a session, e.g. to cancel them when it closes.
  std::vector<TaskId> LiveTasksOfSession(SessionId session) const;

 private:
  // Ids are dense, so task id - 1 indexes the table. Tasks live in fixed-size
  // chunks: they never move (pointers stay valid) and growing the table never
  // copies it (no pause, no 2x peak while a big vector reallocates).
  static constexpr int kChunkBits = 12;
  static constexpr uint64_t kChunkSize = uint64_t{1} << kChunkBits;
  Task& At(uint64_t index) { return chunks_[index >> kChunkBits][index & (kChunkSize - 1)]; }
  const Task& At(uint64_t index) const {
    return chunks_[index >> kChunkBits][index & (kChunkSize - 1)];
  }
  const std::string* Intern(std::string name);

  // Unfinished tasks of a session and the lowest id among them, so that
  // LiveTasksOfSession scans only from there (and not at all when none).
  struct SessionLive {
    uint64_t live = 0;
    TaskId first = 0;
  };

  std::vector<std::unique_ptr<Task[]>> chunks_;
  uint64_t size_ = 0;
  uint64_t counts_[7] = {0};
  std::map<SessionId, SessionLive> live_by_session_;
  // Interned names; past kMaxInterned distinct ones, names are kept one per
  // task in overflow_names_ (a client naming every task differently must
  // not grow the set without bound).
  static constexpr size_t kMaxInterned = 4096;
  std::unordered_set<std::string> names_;
  std::vector<std::unique_ptr<std::string>> overflow_names_;
};

void FillTaskInfo(const Task& task, const std::string& node,
                  dragon::v1::TaskInfo* info);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_TASK_TABLE_H_
