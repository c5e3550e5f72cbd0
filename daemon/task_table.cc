#include "daemon/task_table.h"

#include <algorithm>

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
      // Back to PENDING when its node is lost and it is to be run elsewhere.
      return to == dragon::v1::PENDING || IsTerminal(to);
    default:
      return false;
  }
}

absl::Status ValidateKeepFinished(int64_t keep_finished) {
  if (keep_finished < kKeepAllFinished) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--keep-finished ", keep_finished,
        " is not valid: use a number of finished tasks to keep (0 or more), or -1 to keep all"));
  }
  return absl::OkStatus();
}

const std::string& Task::name_or_empty() const {
  static const std::string kEmpty;
  return name != nullptr ? *name : kEmpty;
}

TaskTable::TaskTable(int64_t keep_finished) : keep_finished_(keep_finished) {}

const std::string* TaskTable::Intern(std::string name, Chunk* chunk) {
  if (name.empty()) return nullptr;
  auto it = names_.find(name);
  if (it != names_.end()) return &*it;
  if (names_.size() < kMaxInterned) return &*names_.insert(std::move(name)).first;
  chunk->own_names.push_back(std::make_unique<std::string>(std::move(name)));
  return chunk->own_names.back().get();
}

TaskId TaskTable::Add(dragon::v1::TaskKind kind, std::string name, SessionId session,
                      uint64_t client_ref, std::string payload, int64_t now_us) {
  if ((size_ & (kChunkSize - 1)) == 0) {
    chunks_.emplace_back().tasks = std::make_unique<Task[]>(kChunkSize);
  }
  Chunk& chunk = chunks_[ChunkOf(size_)];
  ++chunk.unfinished;
  Task& task = At(size_);
  ++size_;
  task.id = size_;
  task.kind = kind;
  task.name = Intern(std::move(name), &chunk);
  task.session = session;
  task.client_ref = client_ref;
  task.payload_bytes = payload.size();
  task.payload = std::move(payload);
  task.submitted_us = now_us;
  ++counts_[dragon::v1::PENDING];
  SessionLive& live = live_by_session_[session];
  if (live.live++ == 0) live.first = task.id;
  return task.id;
}

Task* TaskTable::Find(TaskId id) {
  if (id == 0 || id > size_ || IsForgottenIndex(id - 1)) return nullptr;
  return &At(id - 1);
}

const Task* TaskTable::Find(TaskId id) const {
  if (id == 0 || id > size_ || IsForgottenIndex(id - 1)) return nullptr;
  return &At(id - 1);
}

bool TaskTable::WasForgotten(TaskId id) const {
  return id != 0 && id <= size_ && IsForgottenIndex(id - 1);
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
      task->running_us = 0;
      task->worker_pid = 0;
      task->agent = kNoAgent;
      break;
    case dragon::v1::SCHEDULED:
      task->scheduled_us = now_us;
      break;
    case dragon::v1::RUNNING:
      task->running_us = now_us;
      break;
    default: {
      task->finished_us = now_us;
      auto live = live_by_session_.find(task->session);
      if (live != live_by_session_.end() && --live->second.live == 0) {
        live_by_session_.erase(live);
      }
      // Nothing needs the payload once the task has ended; free it now so a
      // long run's memory follows its live tasks, not its history.
      std::string().swap(task->payload);
      NoteFinished(id - 1);
      break;
    }
  }
  return absl::OkStatus();
}

void TaskTable::NoteFinished(uint64_t index) {
  const uint64_t chunk = ChunkOf(index);
  const bool full = chunk + 1 < chunks_.size() || (size_ & (kChunkSize - 1)) == 0;
  // The last task of a chunk is added while still unfinished, so a chunk can
  // only become all-finished here, never in Add.
  if (--chunks_[chunk].unfinished == 0 && full) finished_chunks_.insert(chunk);
}

uint64_t TaskTable::RetainedFinished() const {
  return counts_[dragon::v1::DONE] + counts_[dragon::v1::FAILED] + counts_[dragon::v1::CANCELLED];
}

void TaskTable::ForgetOldFinished() {
  if (keep_finished_ == kKeepAllFinished) return;
  const uint64_t keep = static_cast<uint64_t>(keep_finished_);
  while (!finished_chunks_.empty() && RetainedFinished() >= keep + kChunkSize) {
    const uint64_t chunk = *finished_chunks_.begin();
    finished_chunks_.erase(finished_chunks_.begin());
    ForgetChunk(chunk);
  }
}

void TaskTable::ForgetChunk(uint64_t chunk) {
  Chunk& c = chunks_[chunk];
  for (uint64_t i = 0; i < kChunkSize; ++i) {
    const TaskState state = c.tasks[i].state;
    --counts_[state];
    ++forgotten_counts_[state];
  }
  forgotten_total_ += kChunkSize;
  // Returns the tasks and every string they own (errors, own names).
  c.tasks.reset();
  std::vector<std::unique_ptr<std::string>>().swap(c.own_names);
}

uint64_t TaskTable::CountInState(TaskState state) const {
  if (state < 0 || state > dragon::v1::CANCELLED) return 0;
  return counts_[state];
}

uint64_t TaskTable::ForgottenInState(TaskState state) const {
  if (state < 0 || state > dragon::v1::CANCELLED) return 0;
  return forgotten_counts_[state];
}

std::vector<const Task*> TaskTable::List(TaskState state, size_t limit, uint64_t* total) const {
  const bool all = state == dragon::v1::TASK_STATE_UNSPECIFIED;
  const uint64_t matching = all ? retained() : CountInState(state);
  std::vector<const Task*> out;
  out.reserve(std::min<uint64_t>(limit, matching));
  uint64_t seen = 0;  // matching tasks passed so far
  for (uint64_t i = size_; i > 0 && out.size() < limit && seen < matching; --i) {
    if (IsForgottenIndex(i - 1)) {
      i = ChunkOf(i - 1) * kChunkSize + 1;  // the loop's --i moves to the chunk before
      continue;
    }
    const Task& task = At(i - 1);
    if (!all && task.state != state) continue;
    ++seen;
    out.push_back(&task);
  }
  if (total != nullptr) *total = matching;
  return out;
}

std::vector<TaskId> TaskTable::LiveTasksOfSession(SessionId session) const {
  std::vector<TaskId> out;
  auto live = live_by_session_.find(session);
  if (live == live_by_session_.end()) return out;
  out.reserve(live->second.live);
  for (uint64_t i = live->second.first - 1; i < size_ && out.size() < live->second.live; ++i) {
    if (IsForgottenIndex(i)) {
      i = (ChunkOf(i) + 1) * kChunkSize - 1;  // the loop's ++i moves to the next chunk
      continue;
    }
    const Task& task = At(i);
    if (task.session == session && !IsTerminal(task.state)) out.push_back(task.id);
  }
  return out;
}

void FillTaskInfo(const Task& task, const std::string& node, dragon::v1::TaskInfo* info) {
  info->set_task_id(task.id);
  info->set_state(task.state);
  info->set_kind(task.kind);
  info->set_name(task.name_or_empty());
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
  info->set_failure(task.failure);
  info->set_infra_attempts(task.infra_attempts);
  if (task.resources) {
    *info->mutable_resources() = task.resources->request;
    if (task.resources->grant.ByteSizeLong() > 0) *info->mutable_grant() = task.resources->grant;
  }
}

}  // namespace dragon::daemon
