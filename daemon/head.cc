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
      scheduler_(options_.prefetch_per_worker, options_.max_prefetch_per_worker),
      membership_(options_.membership,
                  options_.clock != nullptr ? options_.clock : common::RealClock()) {}

absl::StatusOr<dragon::v1::Welcome> Head::OpenSession(const dragon::v1::Hello& hello,
                                                      std::shared_ptr<SessionOutbox> outbox,
                                                      const std::string& peer) {
  if (hello.protocol_version() != kProtocolVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "client '", hello.client_name(), "' speaks protocol version ", hello.protocol_version(),
        " but this dragond (", options_.version, ") speaks version ", kProtocolVersion,
        "; use matching versions of dragon_parsl and dragond"));
  }
  if (hello.has_infra_retries() && hello.infra_retries() > kMaxInfraRetries) {
    return absl::InvalidArgumentError(absl::StrCat("infra_retries ", hello.infra_retries(),
                                                   " is not in 0..", kMaxInfraRetries));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) return absl::UnavailableError("dragond is shutting down");
  SessionId id = next_session_++;
  Session& session = sessions_[id];
  session.cwd = hello.cwd();
  session.client = hello.client_name();
  session.peer = peer;
  session.infra_retries =
      hello.has_infra_retries() ? hello.infra_retries() : options_.infra_retries;
  session.outbox = std::move(outbox);
  session.hold_accepted = hello.accepted_with_results();
  spdlog::info("session {} opened by '{}' pid {} on {} ({}), cwd {}, infra retries {}", id,
               hello.client_name(), hello.client_pid(), hello.client_host(), peer, hello.cwd(),
               session.infra_retries);
  dragon::v1::Welcome welcome;
  welcome.set_protocol_version(kProtocolVersion);
  welcome.set_session_id(id);
  welcome.set_head_version(options_.version);
  welcome.set_run_id(options_.run_id);
  welcome.set_max_payload_bytes(options_.max_payload_bytes);
  welcome.set_infra_retries(session.infra_retries);
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
    dragon::v1::FailureKind kind = dragon::v1::FAILURE_REFUSED;
    if (sub.kind() != dragon::v1::PYTHON && sub.kind() != dragon::v1::EXECUTABLE) {
      refusal = absl::StrCat("task kind ", sub.kind(), " is not supported by this dragond");
    } else if (sub.payload().size() > options_.max_payload_bytes) {
      kind = dragon::v1::FAILURE_TOO_LARGE;
      refusal = absl::StrCat("its payload is ", sub.payload().size(),
                             " bytes, more than the head's limit of ", options_.max_payload_bytes,
                             " bytes per task (dragond --max-payload-mb)");
    } else if (sub.kind() == dragon::v1::EXECUTABLE) {
      refusal = CheckExecutableSpec(sub.payload());
    } else if (sub.payload().empty()) {
      refusal = "empty payload";
    }
    relayed_task_bytes_ += sub.payload().size();
    TaskId id = table_.Add(sub.kind(), std::move(*sub.mutable_name()), session_id,
                           sub.client_ref(), std::move(*sub.mutable_payload()), now);
    Task* task = nullptr;
    if (sub.has_resources()) {
      task = table_.Find(id);
      if (refusal.empty()) refusal = AdmitResourcesLocked(task, sub.resources(), &kind);
    }
    if (!refusal.empty()) {
      FinishLocked(table_.Find(id), dragon::v1::FAILED, dragon::v1::SYSTEM_ERROR, kind,
                   absl::StrCat("task ", id, " refused: ", refusal), "", now, &refused);
      continue;
    }
    if (session->second.hold_accepted && sub.kind() == dragon::v1::PYTHON) {
      session->second.held.Hold(sub.client_ref(), id);
    } else {
      // An executable (an MPI job) opens its I/O once its id is known: at once.
      accepted->add_client_refs(sub.client_ref());
      accepted->add_task_ids(id);
    }
    AgentIndex data_agent = kNoAgent;
    if (!sub.data_node().empty()) {
      data_agent = DataAgentLocked(sub.data_node());
      if (task == nullptr) task = table_.Find(id);
      task->data_agent = data_agent;
    }
    if (task == nullptr || !task->resources) {
      scheduler_.Enqueue(id, 0, data_agent);  // the plain fast path
    } else {
      EnqueueLocked(task, /*front=*/false);
    }
  }
  // With no node left for the grace period, new work fails at once too.
  FailQueuedWithoutNodesLocked(&refused);
  DispatchLocked();
  // The client hears of its tasks after their agents do: waking the session's writer
  // first could cost the dispatch its CPU (two cores, everything busy) while it holds
  // mu_. Still under mu_, so Accepted stays ahead of any result of these tasks.
  if (accepted->client_refs_size() > 0) {
    session->second.held.MoveTo(accepted);  // a message goes anyway: take the held ids along
    session->second.outbox->Push(std::move(accepted_msg));
  }
  SendResultsLocked(&refused);
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
                   dragon::v1::FAILURE_CANCELLED,
                   absl::StrCat("client session ", session_id, " closed: ", why), "", now,
                   nullptr);
    } else if (task->agent != kNoAgent) {
      auto* cancel = cancels[task->agent].mutable_cancel();
      cancel->add_task_ids(id);
      cancel->set_reason(absl::StrCat("client session ", session_id, " closed"));
    }
  }
  for (auto& [agent, msg] : cancels) agents_[agent].link.outbox->Push(std::move(msg));
  spdlog::info("session {} closed ({}); {} unfinished task(s) cancelled", session_id, why,
               live.size());
  ForgetOldFinishedLocked();
}

absl::StatusOr<dragon::v1::DataPeer> Head::PublishDataPeer(SessionId session_id,
                                                          dragon::v1::DataPeer peer) {
  if (peer.ucx_address().empty() || peer.shm_pool_rkey().empty() || peer.shm_pool_bytes() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "session ", session_id, "'s data peer needs a UCX address, a pool rkey and the pool's size"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto session = sessions_.find(session_id);
  if (session == sessions_.end()) {
    return absl::NotFoundError(
        absl::StrCat("session ", session_id, " is not open: its data peer is not published"));
  }
  // The session id makes it unique in this head's run; "client-" keeps it
  // apart from agents' node ids in logs and errors.
  peer.set_peer_id(absl::StrCat("client-", session_id));
  peer.set_session_id(session_id);
  spdlog::info("session {}: data peer {} published (pid {} on {}, pool of {} bytes)", session_id,
               peer.peer_id(), peer.pid(), peer.host(), peer.shm_pool_bytes());
  session->second.data_peer = peer;
  return peer;
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
                 dragon::v1::FAILURE_CANCELLED,
                 absl::StrCat("task ", id, " cancelled by ", who, " while pending"), "",
                 NowMicros(), &results);
    SendResultsLocked(&results);
  } else if (!IsTerminal(task->state)) {
    dragon::v1::HeadToAgent msg;
    msg.mutable_cancel()->add_task_ids(id);
    msg.mutable_cancel()->set_reason(absl::StrCat("cancelled by ", who));
    agents_[task->agent].link.outbox->Push(std::move(msg));
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

void Head::BeginShutdown(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  shutting_down_ = true;
  EndAllTaskIOLocked("dragond is shutting down");
  for (size_t i = 0; i < agents_.size(); ++i) {
    if (!membership_.Live(static_cast<AgentIndex>(i))) continue;
    dragon::v1::HeadToAgent msg;
    msg.mutable_shutdown()->set_reason(reason);
    agents_[i].link.outbox->Push(std::move(msg));
  }
  for (auto& [id, session] : sessions_) session.outbox->Close();
}

bool Head::WaitForAgentsGone(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return agents_cv_.wait_for(lock, absl::ToChronoMicroseconds(timeout),
                             [this] { return membership_.live_count() == 0; });
}

void Head::DispatchLocked() {
  if (scheduler_.queued() == 0 || shutting_down_) return;
  const int64_t now = NowMicros();
  auto pending = [this](TaskId id) {
    const Task* task = table_.Find(id);
    return task != nullptr && task->state == dragon::v1::PENDING;
  };
  std::map<AgentIndex, dragon::v1::HeadToAgent> batches;
  // Placed tasks first: the cores they take shrink the agents' plain slots.
  DispatchPlacedLocked(now, &batches);
  auto assignments = scheduler_.Assign(pending);
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
    // A plain task with a walltime: the one limit its agent enforces.
    if (task->resources && task->resources->walltime_s > 0) {
      assignment->mutable_grant()->set_walltime_s(task->resources->walltime_s);
    }
  }
  for (auto& [agent, msg] : batches) agents_[agent].link.outbox->Push(std::move(msg));
}

void Head::FinishLocked(Task* task, TaskState state, Outcome outcome,
                        dragon::v1::FailureKind failure, std::string error, std::string data,
                        int64_t now, ResultsBySession* results) {
  if (!table_.Transition(task->id, state, now).ok()) return;
  if (!io_channels_.empty()) TaskIOTaskEndedLocked(*task);
  if (failure == dragon::v1::FAILURE_KIND_UNSPECIFIED && outcome == dragon::v1::CANCELED) {
    failure = dragon::v1::FAILURE_CANCELLED;
  }
  task->outcome = outcome;
  task->failure = failure;
  task->error = error;
  UnplaceLocked(task);
  if (state == dragon::v1::FAILED) spdlog::warn("{}", error);
  task_ended_cv_.notify_all();
  if (results == nullptr || sessions_.count(task->session) == 0) return;
  auto* out = (*results)[task->session].mutable_results()->add_results();
  out->set_client_ref(task->client_ref);
  out->set_task_id(task->id);
  auto* result = out->mutable_result();
  result->set_task_id(task->id);
  result->set_outcome(outcome);
  relayed_task_bytes_ += data.size();
  result->set_data(std::move(data));
  result->set_error(std::move(error));
  result->set_node(NodeNameLocked(task->agent));
  result->set_worker_pid(task->worker_pid);
  result->set_start_us(task->running_us);
  result->set_end_us(now);
  result->set_failure(failure);
}

void Head::SendResultsLocked(ResultsBySession* results) {
  for (auto& [session_id, msg] : *results) {
    auto session = sessions_.find(session_id);
    if (session == sessions_.end()) continue;
    session->second.held.AttachTo(msg.mutable_results());
    session->second.outbox->Push(std::move(msg));
  }
  results->clear();
}

void Head::FlushHeldAcceptedLocked() {
  for (auto& [id, session] : sessions_) {
    if (session.held.empty()) continue;
    dragon::v1::HeadMessage msg;
    session.held.MoveTo(msg.mutable_accepted());
    session.outbox->Push(std::move(msg));
  }
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

AgentIndex Head::DataAgentLocked(const std::string& node_id) const {
  const AgentIndex agent = membership_.Latest(node_id);
  // Unknown, lost or gone: the data is no reason to wait for it.
  if (agent == kNoAgent || !membership_.Live(agent)) return kNoAgent;
  return agent;
}

const std::string& Head::NodeNameLocked(AgentIndex agent) const {
  if (agent == kNoAgent || static_cast<size_t>(agent) >= agents_.size()) return kNoNode;
  return agents_[agent].info.node_id();
}

}  // namespace dragon::daemon
