// The head's record of every task of the run: state, where it ran, and the
// time of each transition. Not thread-safe: the Head serialises access.
#ifndef DRAGON_DAEMON_TASK_TABLE_H_
#define DRAGON_DAEMON_TASK_TABLE_H_

#include <cstdint>
#include <string>
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

struct Task {
  TaskId id = 0;
  dragon::v1::TaskState state = dragon::v1::PENDING;
  dragon::v1::TaskKind kind = dragon::v1::PYTHON;
  std::string name;
  SessionId session = 0;
  uint64_t client_ref = 0;
  // Kept until the task ends so a task on a lost node can be re-queued.
  std::string payload;
  uint64_t payload_bytes = 0;
  AgentIndex agent = kNoAgent;
  int32_t worker_pid = 0;
  int64_t submitted_us = 0;
  int64_t scheduled_us = 0;
  int64_t running_us = 0;
  int64_t finished_us = 0;
  dragon::v1::Outcome outcome = dragon::v1::OUTCOME_UNSPECIFIED;
  std::string error;
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
  uint64_t size() const { return tasks_.size(); }

  // Tasks in `state` (all states for TASK_STATE_UNSPECIFIED), newest first,
  // at most `limit`; `total` receives the number that matched.
  std::vector<const Task*> List(dragon::v1::TaskState state, size_t limit,
                                uint64_t* total) const;

  // Every non-terminal task of a session, e.g. to cancel them when it closes.
  std::vector<TaskId> LiveTasksOfSession(SessionId session) const;

 private:
  // Ids are dense, so a vector indexed by id - 1 is the map.
  std::vector<Task> tasks_;
  uint64_t counts_[7] = {0};
};

void FillTaskInfo(const Task& task, const std::string& node,
                  dragon::v1::TaskInfo* info);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_TASK_TABLE_H_
