#include "daemon/task_table.h"

#include "absl/strings/str_cat.h"

namespace dragon::daemon {

using dragon::v1::TaskState;

bool IsTerminal(TaskState state) {
  return state == dragon::v1::DONE || state == dragon::v1::FAILED ||
         state == dragon::v1::CANCELLED;
}

bool IsAllowedTransition(TaskState from, TaskState to) {
  switch (from) {
    case dragon::v1::PENDING:
      return to == dragon::v1::SCHEDULED || to == dragon::v1::FAILED ||
             to == dragon::v1::CANCELLED;
    case dragon::v1::SCHEDULED:
      // Back to PENDING when its node is lost before it started; straight to
      // an end when the agent reports start and end in one update.
      return to == dragon::v1::PENDING || to == dragon::v1::RUNNING || IsTerminal(to);
    case dragon::v1::RUNNING:
      return IsTerminal(to);
    default:
      return false;
  }
}

TaskId TaskTable::Add(dragon::v1::TaskKind kind, std::string name, SessionId session,
                      uint64_t client_ref, std::string payload, int64_t now_us) {
  Task& task = tasks_.emplace_back();
  task.id = tasks_.size();
  task.kind = kind;
  task.name = std::move(name);
  task.session = session;
  task.client_ref = client_ref;
  task.payload_bytes = payload.size();
  task.payload = std::move(payload);
  task.submitted_us = now_us;
  ++counts_[dragon::v1::PENDING];
  return task.id;
}

Task* TaskTable::Find(TaskId id) {
  if (id == 0 || id > tasks_.size()) return nullptr;
  return &tasks_[id - 1];
}

const Task* TaskTable::Find(TaskId id) const {
  if (id == 0 || id > tasks_.size()) return nullptr;
  return &tasks_[id - 1];
}

absl::Status TaskTable::Transition(TaskId id, TaskState to, int64_t now_us) {
  Task* task = Find(id);
  if (task == nullptr) return absl::NotFoundError(absl::StrCat("no task ", id, " in this run"));
  if (!IsAllowedTransition(task->state, to)) {
    return absl::FailedPreconditionError(
        absl::StrCat("task ", id, " cannot go from ", dragon::v1::TaskState_Name(task->state),
                     " to ", dragon::v1::TaskState_Name(to)));
  }
  --counts_[task->state];
  ++counts_[to];
  task->state = to;
  switch (to) {
    case dragon::v1::PENDING:
      task->scheduled_us = 0;
      task->agent = kNoAgent;
      break;
    case dragon::v1::SCHEDULED:
      task->scheduled_us = now_us;
      break;
    case dragon::v1::RUNNING:
      task->running_us = now_us;
      break;
    default:
      task->finished_us = now_us;
      // Nothing needs the payload once the task has ended; free it now so a
      // long run's memory follows its live tasks, not its history.
      std::string().swap(task->payload);
      break;
  }
  return absl::OkStatus();
}

uint64_t TaskTable::CountInState(TaskState state) const {
  if (state < 0 || state > dragon::v1::CANCELLED) return 0;
  return counts_[state];
}

std::vector<const Task*> TaskTable::List(TaskState state, size_t limit, uint64_t* total) const {
  std::vector<const Task*> out;
  uint64_t matched = 0;
  for (auto it = tasks_.rbegin(); it != tasks_.rend(); ++it) {
    if (state != dragon::v1::TASK_STATE_UNSPECIFIED && it->state != state) continue;
    ++matched;
    if (out.size() < limit) out.push_back(&*it);
  }
  if (total != nullptr) *total = matched;
  return out;
}

std::vector<TaskId> TaskTable::LiveTasksOfSession(SessionId session) const {
  std::vector<TaskId> out;
  for (const Task& task : tasks_) {
    if (task.session == session && !IsTerminal(task.state)) out.push_back(task.id);
  }
  return out;
}

void FillTaskInfo(const Task& task, const std::string& node, dragon::v1::TaskInfo* info) {
  info->set_task_id(task.id);
  info->set_state(task.state);
  info->set_kind(task.kind);
  info->set_name(task.name);
  info->set_session_id(task.session);
  info->set_client_ref(task.client_ref);
  info->set_node(node);
  info->set_worker_pid(task.worker_pid);
  auto* times = info->mutable_times();
  times->set_submitted_us(task.submitted_us);
  times->set_scheduled_us(task.scheduled_us);
  times->set_running_us(task.running_us);
  times->set_finished_us(task.finished_us);
  info->set_outcome(task.outcome);
  info->set_error(task.error);
  info->set_payload_bytes(task.payload_bytes);
}

}  // namespace dragon::daemon
