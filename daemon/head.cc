#include "daemon/head.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

using dragon::v1::Outcome;
using dragon::v1::TaskState;

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

const std::string kNoNode;

// The outcome an agent reported decides the task's final state.
TaskState StateForOutcome(Outcome outcome) {
  switch (outcome) {
    case dragon::v1::OK:
    case dragon::v1::APP_EXCEPTION:
      return dragon::v1::DONE;
    case dragon::v1::CANCELED:
      return dragon::v1::CANCELLED;
    default:
      return dragon::v1::FAILED;
  }
}

// Why an EXECUTABLE payload cannot run, or "" when it can (the agent
// reports everything that only running it can tell, e.g. a missing binary).
std::string CheckExecutableSpec(const std::string& payload) {
  dragon::v1::ExecutableSpec spec;
  if (!spec.ParseFromString(payload)) {
    return absl::StrCat("the payload of an EXECUTABLE task must be a serialized ExecutableSpec; ",
                        payload.size(), " bytes could not be parsed as one");
  }
  if (spec.argv_size() == 0) return "ExecutableSpec has an empty argv";
  if (spec.argv(0).empty()) return "ExecutableSpec has an empty argv[0]";
  for (const std::string& arg : spec.argv()) {
    if (arg.find('\0') != std::string::npos) return "ExecutableSpec argv holds a NUL byte";
  }
  for (const auto& [key, value] : spec.env()) {
    if (key.empty() || key.find('=') != std::string::npos || key.find('\0') != std::string::npos ||
        value.find('\0') != std::string::npos) {
      return absl::StrCat("ExecutableSpec env has an invalid name '", key, "'");
    }
  }
  return "";
}

}  // namespace

Head::Head(HeadOptions options)
    : options_(std::move(options)),
      started_us_(NowMicros()),
      table_(options_.keep_finished),
      scheduler_(options_.prefetch_per_worker, options_.max_prefetch_per_worker) {}

absl::StatusOr<dragon::v1::Welcome> Head::OpenSession(const dragon::v1::Hello& hello,
                                                      std::shared_ptr<SessionOutbox> outbox,
                                                      const std::string& peer) {
  if (hello.protocol_version() != kProtocolVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "client '", hello.client_name(), "' speaks protocol version ", hello.protocol_version(),
        " but this dragond (", options_.version, ") speaks version ", kProtocolVersion,
        "; use matching versions of dragon_parsl and dragond"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) return absl::UnavailableError("dragond is shutting down");
  SessionId id = next_session_++;
  Session& session = sessions_[id];
  session.cwd = hello.cwd();
  session.client = hello.client_name();
  session.peer = peer;
  session.outbox = std::move(outbox);
  spdlog::info("session {} opened by '{}' pid {} on {} ({}), cwd {}", id, hello.client_name(),
               hello.client_pid(), hello.client_host(), peer, hello.cwd());
  dragon::v1::Welcome welcome;
  welcome.set_protocol_version(kProtocolVersion);
  welcome.set_session_id(id);
  welcome.set_head_version(options_.version);
  welcome.set_run_id(options_.run_id);
  welcome.set_max_payload_bytes(options_.max_payload_bytes);
  return welcome;
}

void Head::Submit(SessionId session_id, dragon::v1::SubmitBatch* batch) {
  const int64_t now = NowMicros();
  std::lock_guard<std::mutex> lock(mu_);
  auto session = sessions_.find(session_id);
  if (session == sessions_.end()) return;
  dragon::v1::HeadMessage accepted_msg;
  auto* accepted = accepted_msg.mutable_accepted();
  accepted->mutable_client_refs()->Reserve(batch->tasks_size());
  accepted->mutable_task_ids()->Reserve(batch->tasks_size());
  ResultsBySession refused;
  for (auto& sub : *batch->mutable_tasks()) {
    std::string refusal;
    if (sub.kind() != dragon::v1::PYTHON && sub.kind() != dragon::v1::EXECUTABLE) {
      refusal = absl::StrCat("task kind ", sub.kind(), " is not supported by this dragond");
    } else if (sub.payload().size() > options_.max_payload_bytes) {
      refusal = absl::StrCat("payload of ", sub.payload().size(),
                             " bytes exceeds the head's limit of ", options_.max_payload_bytes,
                             " bytes (dragond --max-payload-mb)");
    } else if (sub.kind() == dragon::v1::EXECUTABLE) {
      refusal = CheckExecutableSpec(sub.payload());
    } else if (sub.payload().empty()) {
      refusal = "empty payload";
    }
    TaskId id = table_.Add(sub.kind(), std::move(*sub.mutable_name()), session_id,
                           sub.client_ref(), std::move(*sub.mutable_payload()), now);
    if (!refusal.empty()) {
      FinishLocked(table_.Find(id), dragon::v1::FAILED, dragon::v1::SYSTEM_ERROR,
                   absl::StrCat("task ", id, " refused: ", refusal), "", now, &refused);
      continue;
    }
    accepted->add_client_refs(sub.client_ref());
    accepted->add_task_ids(id);
    scheduler_.Enqueue(id);
  }
  if (accepted->client_refs_size() > 0) session->second.outbox->Push(std::move(accepted_msg));
  SendResultsLocked(&refused);
  DispatchLocked();
  ForgetOldFinishedLocked();
}

void Head::CloseSession(SessionId session_id, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  it->second.outbox->Close();
  sessions_.erase(it);
  // Nobody is left to receive these results: free the workers for others.
  std::vector<TaskId> live = table_.LiveTasksOfSession(session_id);
  const int64_t now = NowMicros();
  std::map<AgentIndex, dragon::v1::HeadToAgent> cancels;
  for (TaskId id : live) {
    Task* task = table_.Find(id);
    if (task == nullptr) continue;  // live tasks are never forgotten; defensive
    if (task->state == dragon::v1::PENDING) {
      FinishLocked(task, dragon::v1::CANCELLED, dragon::v1::CANCELED,
                   absl::StrCat("client session ", session_id, " closed: ", why), "", now,
                   nullptr);
    } else if (task->agent != kNoAgent) {
      auto* cancel = cancels[task->agent].mutable_cancel();
      cancel->add_task_ids(id);
      cancel->set_reason(absl::StrCat("client session ", session_id, " closed"));
    }
  }
  for (auto& [agent, msg] : cancels) agents_[agent].outbox->Push(std::move(msg));
  spdlog::info("session {} closed ({}); {} unfinished task(s) cancelled", session_id, why,
               live.size());
  ForgetOldFinishedLocked();
}

absl::StatusOr<AgentIndex> Head::RegisterAgent(const dragon::v1::Register& reg,
                                               std::shared_ptr<AgentOutbox> outbox,
                                               const std::string& peer) {
  if (reg.protocol_version() != kProtocolVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "agent ", reg.node_id(), " (", reg.agent_version(), ") speaks protocol version ",
        reg.protocol_version(), " but this dragond (", options_.version, ") speaks version ",
        kProtocolVersion));
  }
  if (reg.node_id().empty()) return absl::InvalidArgumentError("Register without node_id");
  if (reg.workers() == 0 || reg.workers() > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("agent ", reg.node_id(), " registered with ", reg.workers(),
                     " workers; expected 1..4096"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) return absl::UnavailableError("dragond is shutting down");
  for (const Agent& agent : agents_) {
    if (agent.connected && agent.info.node_id() == reg.node_id()) {
      return absl::AlreadyExistsError(
          absl::StrCat("an agent for node ", reg.node_id(), " is already connected (pid ",
                       agent.info.pid(), ")"));
    }
  }
  AgentIndex index = static_cast<AgentIndex>(agents_.size());
  Agent& agent = agents_.emplace_back();
  agent.info = reg;
  agent.peer = peer;
  agent.connected_us = agent.last_heartbeat_us = NowMicros();
  agent.outbox = std::move(outbox);
  dragon::v1::HeadToAgent registered;
  registered.mutable_registered()->set_protocol_version(kProtocolVersion);
  registered.mutable_registered()->set_run_id(options_.run_id);
  registered.mutable_registered()->set_heartbeat_interval_ms(options_.heartbeat_interval_ms);
  agent.outbox->Push(std::move(registered));
  scheduler_.AddAgent(index, static_cast<int>(reg.workers()));
  spdlog::info("agent {} registered: host {} pid {} cores {} workers {} ({})", reg.node_id(),
               reg.host(), reg.pid(), reg.cores(), reg.workers(), peer);
  DispatchLocked();
  return index;
}

void Head::Heartbeat(AgentIndex index, const dragon::v1::Heartbeat& beat) {
  std::lock_guard<std::mutex> lock(mu_);
  Agent& agent = agents_[index];
  // Liveness only: busy workers are known from the task table.
  agent.last_heartbeat_us = NowMicros();
}

void Head::ApplyUpdate(AgentIndex index, dragon::v1::AgentUpdate* update) {
  const int64_t now = NowMicros();
  std::lock_guard<std::mutex> lock(mu_);
  Agent& agent = agents_[index];
  agent.last_heartbeat_us = now;
  for (const auto& started : update->started()) {
    Task* task = table_.Find(started.task_id());
    if (task == nullptr || task->agent != index || task->state != dragon::v1::SCHEDULED) {
      spdlog::debug("agent {}: ignoring start of task {}", agent.info.node_id(), started.task_id());
      continue;
    }
    (void)table_.Transition(task->id, dragon::v1::RUNNING, now);
    task->worker_pid = started.worker_pid();
    // The agent's clock: a start and its result often arrive in one update,
    // so the head's receipt times would show a runtime of zero.
    if (started.start_us() > 0) task->running_us = started.start_us();
  }
  ResultsBySession results;
  for (auto& result : *update->mutable_results()) {
    Task* task = table_.Find(result.task_id());
    if (task == nullptr || task->agent != index || IsTerminal(task->state)) {
      spdlog::warn("agent {}: result for task {} that it does not hold; ignored",
                   agent.info.node_id(), result.task_id());
      continue;
    }
    if (task->state == dragon::v1::SCHEDULED) {
      (void)table_.Transition(task->id, dragon::v1::RUNNING, now);
      if (result.start_us() > 0) task->running_us = result.start_us();
    }
    if (result.worker_pid() != 0) task->worker_pid = result.worker_pid();
    // For a task that ran to its end, end == start is a task shorter than
    // the clock's microsecond, the shortest there is, not a missing time: it
    // must count, or floods of tiny tasks never get a deeper prefetch. A
    // failure stamped with one time (e.g. it never started) tells nothing.
    const bool completed =
        result.outcome() == dragon::v1::OK || result.outcome() == dragon::v1::APP_EXCEPTION;
    if (result.start_us() > 0 && result.outcome() != dragon::v1::CANCELED &&
        (result.end_us() > result.start_us() ||
         (completed && result.end_us() == result.start_us()))) {
      scheduler_.ObserveRuntime(index, result.end_us() - result.start_us());
    }
    ++agent.tasks_done;
    // Finish at the agent's end time when it gave one (never before the start).
    const int64_t end = result.end_us() > 0 ? std::max(result.end_us(), task->running_us) : now;
    FinishLocked(task, StateForOutcome(result.outcome()), result.outcome(),
                 std::move(*result.mutable_error()), std::move(*result.mutable_data()), end,
                 &results);
  }
  SendResultsLocked(&results);
  DispatchLocked();
  ForgetOldFinishedLocked();
}

void Head::AgentLost(AgentIndex index, const std::string& why) {
  const int64_t now = NowMicros();
  std::lock_guard<std::mutex> lock(mu_);
  Agent& agent = agents_[index];
  if (!agent.connected) return;
  agent.connected = false;
  agent.outbox->Close();
  scheduler_.RemoveAgent(index);
  std::vector<TaskId> held(agent.tasks.begin(), agent.tasks.end());
  // Re-queue in reverse so that the oldest ends up at the front.
  std::sort(held.rbegin(), held.rend());
  ResultsBySession results;
  int requeued = 0, failed = 0;
  for (TaskId id : held) {
    Task* task = table_.Find(id);
    if (task == nullptr) continue;  // held tasks are unfinished, never forgotten; defensive
    if (task->state == dragon::v1::SCHEDULED) {
      (void)table_.Transition(id, dragon::v1::PENDING, now);
      scheduler_.Requeue(id);
      ++requeued;
    } else if (task->state == dragon::v1::RUNNING) {
      FinishLocked(task, dragon::v1::FAILED, dragon::v1::SYSTEM_ERROR,
                   absl::StrCat("task ", id, " on node ", agent.info.node_id(), ": worker pid ",
                                task->worker_pid, " lost with its node (", why, ")"),
                   "", now, &results);
      ++failed;
    }
  }
  agent.tasks.clear();
  if (shutting_down_) {
    spdlog::info("agent {} disconnected ({})", agent.info.node_id(), why);
  } else {
    spdlog::error("agent {} lost ({}): {} task(s) re-queued, {} running task(s) failed",
                  agent.info.node_id(), why, requeued, failed);
  }
  SendResultsLocked(&results);
  DispatchLocked();
  ForgetOldFinishedLocked();
  agents_cv_.notify_all();
}

absl::StatusOr<dragon::v1::CancelReply> Head::Cancel(TaskId id, const std::string& who,
                                                     absl::Duration wait) {
  std::unique_lock<std::mutex> lock(mu_);
  Task* task = table_.Find(id);
  if (task == nullptr) return TaskNotFoundLocked(id);
  dragon::v1::CancelReply reply;
  reply.set_previous_state(task->state);
  if (task->state == dragon::v1::PENDING) {
    ResultsBySession results;
    FinishLocked(task, dragon::v1::CANCELLED, dragon::v1::CANCELED,
                 absl::StrCat("task ", id, " cancelled by ", who, " while pending"), "",
                 NowMicros(), &results);
    SendResultsLocked(&results);
  } else if (!IsTerminal(task->state)) {
    dragon::v1::HeadToAgent msg;
    msg.mutable_cancel()->add_task_ids(id);
    msg.mutable_cancel()->set_reason(absl::StrCat("cancelled by ", who));
    agents_[task->agent].outbox->Push(std::move(msg));
    spdlog::info("task {}: cancel sent to agent {} ({})", id, NodeNameLocked(task->agent), who);
    ++cancel_waiters_;
    task_ended_cv_.wait_for(lock, absl::ToChronoMicroseconds(wait),
                            [&] { return IsTerminal(table_.Find(id)->state); });
    --cancel_waiters_;
    task = table_.Find(id);
  }
  reply.set_state(task->state);
  ForgetOldFinishedLocked();  // catch up on what waiting Cancels put off
  return reply;
}

absl::StatusOr<dragon::v1::TaskInfo> Head::GetTask(TaskId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Task* task = table_.Find(id);
  if (task == nullptr) return TaskNotFoundLocked(id);
  dragon::v1::TaskInfo info;
  FillTaskInfo(*task, NodeNameLocked(task->agent), &info);
  return info;
}

dragon::v1::ListTasksReply Head::ListTasks(const dragon::v1::ListTasksRequest& request) const {
  size_t limit = request.limit() == 0 ? 1000 : std::min<uint32_t>(request.limit(), 100000);
  std::lock_guard<std::mutex> lock(mu_);
  dragon::v1::ListTasksReply reply;
  uint64_t total = 0;
  for (const Task* task : table_.List(request.state(), limit, &total)) {
    FillTaskInfo(*task, NodeNameLocked(task->agent), reply.add_tasks());
  }
  reply.set_total_matching(total);
  return reply;
}

dragon::v1::ListNodesReply Head::ListNodes() const {
  std::lock_guard<std::mutex> lock(mu_);
  dragon::v1::ListNodesReply reply;
  for (size_t i = 0; i < agents_.size(); ++i) {
    const Agent& agent = agents_[i];
    auto* node = reply.add_nodes();
    node->set_node_id(agent.info.node_id());
    node->set_host(agent.info.host());
    node->set_cores(agent.info.cores());
    node->set_memory_bytes(agent.info.memory_bytes());
    node->set_agent_pid(agent.info.pid());
    node->set_agent_version(agent.info.agent_version());
    node->set_workers(agent.connected ? agent.info.workers() : 0);
    // Counted from the task table rather than the last heartbeat, which can
    // be seconds old: 'nodes' right after a burst must not show stale work.
    uint32_t running = 0;
    if (agent.connected) {
      for (TaskId id : agent.tasks) {
        const Task* task = table_.Find(id);
        running += task != nullptr && task->state == dragon::v1::RUNNING;
      }
    }
    node->set_busy_workers(std::min(running, agent.info.workers()));
    node->set_assigned_tasks(static_cast<uint32_t>(agent.tasks.size()));
    node->set_tasks_done(agent.tasks_done);
    node->set_connected_us(agent.connected_us);
    node->set_last_heartbeat_us(agent.last_heartbeat_us);
    node->set_state(agent.connected ? "connected" : "lost");
  }
  return reply;
}

void Head::FillStatus(dragon::v1::StatusReply* reply) const {
  std::lock_guard<std::mutex> lock(mu_);
  reply->set_head_version(options_.version);
  reply->set_protocol_version(kProtocolVersion);
  reply->set_run_id(options_.run_id);
  reply->set_started_us(started_us_);
  uint32_t nodes = 0, workers = 0;
  for (const Agent& agent : agents_) {
    if (!agent.connected) continue;
    ++nodes;
    workers += agent.info.workers();
  }
  reply->set_nodes(nodes);
  reply->set_workers(workers);
  reply->set_sessions(static_cast<uint32_t>(sessions_.size()));
  auto* counts = reply->mutable_tasks_by_state();
  for (int s = dragon::v1::PENDING; s <= dragon::v1::CANCELLED; ++s) {
    (*counts)[dragon::v1::TaskState_Name(static_cast<TaskState>(s))] =
        table_.CountInState(static_cast<TaskState>(s));
    const uint64_t forgotten = table_.ForgottenInState(static_cast<TaskState>(s));
    if (forgotten > 0) {
      (*reply->mutable_forgotten_by_state())[dragon::v1::TaskState_Name(
          static_cast<TaskState>(s))] = forgotten;
    }
  }
  reply->set_keep_finished(table_.keep_finished());
  reply->set_highest_task_id(table_.size());
}

void Head::BeginShutdown(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  for (Agent& agent : agents_) {
    if (!agent.connected) continue;
    dragon::v1::HeadToAgent msg;
    msg.mutable_shutdown()->set_reason(reason);
    agent.outbox->Push(std::move(msg));
  }
  for (auto& [id, session] : sessions_) session.outbox->Close();
}

bool Head::WaitForAgentsGone(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return agents_cv_.wait_for(lock, absl::ToChronoMicroseconds(timeout), [this] {
    return std::none_of(agents_.begin(), agents_.end(),
                        [](const Agent& a) { return a.connected; });
  });
}

void Head::DispatchLocked() {
  if (scheduler_.queued() == 0 || shutting_down_) return;
  const int64_t now = NowMicros();
  auto assignments = scheduler_.Assign([this](TaskId id) {
    const Task* task = table_.Find(id);
    return task != nullptr && task->state == dragon::v1::PENDING;
  });
  if (assignments.empty()) return;
  std::map<AgentIndex, dragon::v1::HeadToAgent> batches;
  for (const Assignment& a : assignments) {
    Task* task = table_.Find(a.task);
    (void)table_.Transition(a.task, dragon::v1::SCHEDULED, now);
    task->agent = a.agent;
    agents_[a.agent].tasks.insert(a.task);
    auto* assignment = batches[a.agent].mutable_tasks()->add_tasks();
    assignment->set_task_id(a.task);
    assignment->set_kind(task->kind);
    // Copied, not moved: the table keeps it in case the node is lost before
    // the task starts.
    assignment->set_payload(task->payload);
    auto session = sessions_.find(task->session);
    if (session != sessions_.end()) assignment->set_cwd(session->second.cwd);
  }
  for (auto& [agent, msg] : batches) agents_[agent].outbox->Push(std::move(msg));
}

void Head::FinishLocked(Task* task, TaskState state, Outcome outcome, std::string error,
                        std::string data, int64_t now, ResultsBySession* results) {
  if (!table_.Transition(task->id, state, now).ok()) return;
  task->outcome = outcome;
  task->error = error;
  if (task->agent != kNoAgent) {
    scheduler_.Release(task->agent);
    agents_[task->agent].tasks.erase(task->id);
  }
  if (state == dragon::v1::FAILED) spdlog::warn("{}", error);
  task_ended_cv_.notify_all();
  if (results == nullptr || sessions_.count(task->session) == 0) return;
  auto* out = (*results)[task->session].mutable_results()->add_results();
  out->set_client_ref(task->client_ref);
  out->set_task_id(task->id);
  auto* result = out->mutable_result();
  result->set_task_id(task->id);
  result->set_outcome(outcome);
  result->set_data(std::move(data));
  result->set_error(std::move(error));
  result->set_node(NodeNameLocked(task->agent));
  result->set_worker_pid(task->worker_pid);
  result->set_start_us(task->running_us);
  result->set_end_us(now);
}

void Head::SendResultsLocked(ResultsBySession* results) {
  for (auto& [session_id, msg] : *results) {
    auto session = sessions_.find(session_id);
    if (session != sessions_.end()) session->second.outbox->Push(std::move(msg));
  }
  results->clear();
}

void Head::ForgetOldFinishedLocked() {
  if (cancel_waiters_ > 0) return;  // the last Cancel to finish catches up
  table_.ForgetOldFinished();
}

absl::Status Head::TaskNotFoundLocked(TaskId id) const {
  if (table_.WasForgotten(id)) {
    return absl::NotFoundError(absl::StrCat(
        "task ", id, " finished and was forgotten: this head keeps only the newest ",
        table_.keep_finished(), " finished tasks (dragond --keep-finished, rounded up to whole ",
        kTaskChunkSize, "-task chunks)"));
  }
  return absl::NotFoundError(absl::StrCat("no task ", id, " in this run"));
}

const std::string& Head::NodeNameLocked(AgentIndex agent) const {
  if (agent == kNoAgent || static_cast<size_t>(agent) >= agents_.size()) return kNoNode;
  return agents_[agent].info.node_id();
}

}  // namespace dragon::daemon
