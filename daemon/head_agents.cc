// The Head's side of agents: registration and fencing, heartbeats, updates,
// loss (infrastructure retries), the no-node grace, drain. See head.h.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/head.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

using dragon::v1::Outcome;
using dragon::v1::TaskState;

namespace {

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

}  // namespace

absl::StatusOr<AgentRegistration> Head::RegisterAgent(const dragon::v1::Register& reg,
                                                      AgentLink link) {
  if (reg.protocol_version() != kProtocolVersion) {
    // The agent reads the mismatch from this field, not from the error text.
    dragon::v1::HeadToAgent version;
    version.mutable_registered()->set_protocol_version(kProtocolVersion);
    link.outbox->Push(std::move(version));
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
  absl::StatusOr<Admission> admission =
      membership_.Admit(reg.node_id(), reg.previous_incarnation(), reg.pid());
  if (!admission.ok()) {
    spdlog::warn("agent {} pid {} on {} ({}) refused: {}", reg.node_id(), reg.pid(), reg.host(),
                 link.peer, std::string(admission.status().message()));
    return admission.status();
  }
  ResultsBySession results;
  if (admission->fenced != kNoAgent) {
    // Its replacement is here: not a loss to report to the launcher.
    EndAgentLocked(admission->fenced, membership_.member(admission->fenced).reason,
                   AgentEnd::kReplaced, &results);
  }
  const AgentIndex index = admission->index;
  if (static_cast<size_t>(index) != agents_.size()) {
    return absl::InternalError("membership and agent table out of step");  // a bug, never silent
  }
  Agent& agent = agents_.emplace_back();
  agent.info = reg;
  agent.link = std::move(link);
  agent.incarnation = admission->incarnation;
  agent.connected_us = agent.last_heartbeat_us = NowMicros();
  dragon::v1::HeadToAgent registered;
  auto* r = registered.mutable_registered();
  r->set_protocol_version(kProtocolVersion);
  r->set_run_id(options_.run_id);
  r->set_heartbeat_interval_ms(static_cast<uint32_t>(
      absl::ToInt64Milliseconds(options_.membership.heartbeat_interval)));
  r->set_heartbeat_timeout_ms(static_cast<uint32_t>(
      absl::ToInt64Milliseconds(options_.membership.heartbeat_timeout)));
  r->set_incarnation(admission->incarnation);
  r->set_max_payload_bytes(options_.max_payload_bytes);
  agent.link.outbox->Push(std::move(registered));
  // No task until its task loop has answered a ping (joining -> ready).
  scheduler_.AddAgent(index, static_cast<int>(reg.workers()), /*paused=*/true);
  // Until its first heartbeat says otherwise, its pool is empty.
  membership_.SetPoolUsage(index, reg.shm_pool_bytes(), 0);
  scheduler_.SetAgentResources(index, reg.cores(), reg.memory_bytes(),
                               static_cast<uint32_t>(reg.gpus_size()), reg.host(), reg.node_id());
  for (auto [due, seq] : membership_.TakeDuePings()) PingLocked(due, seq);
  std::string block;
  if (!reg.block_id().empty()) block = absl::StrCat(", block ", reg.block_id());
  if (reg.job_end_us() > 0) {
    const absl::Time end = absl::FromUnixMicros(reg.job_end_us());
    const absl::Duration window = absl::Milliseconds(reg.drain_before_end_ms());
    membership_.SetAllocationEnd(index, end, window);
    absl::StrAppend(&block, ", allocation ends in ",
                    absl::FormatDuration(absl::Trunc(end - membership_.clock()->Now(),
                                                     absl::Seconds(1))),
                    " (no new tasks from ", absl::FormatDuration(window), " before)");
  }
  spdlog::info("agent {} registered: incarnation {}, host {} pid {} cores {} workers {} gpus {}{} ({})",
               reg.node_id(), admission->incarnation, reg.host(), reg.pid(), reg.cores(),
               reg.workers(), reg.gpus_size(), block, agent.link.peer);
  // An allocation that already ends within its window: draining from the start.
  DrainEndingLocked();
  SendResultsLocked(&results);
  DispatchLocked();
  return AgentRegistration{index, admission->incarnation};
}

void Head::PingLocked(AgentIndex index, uint64_t seq) {
  dragon::v1::HeadToAgent ping;
  ping.mutable_ping()->set_seq(seq);
  agents_[index].link.outbox->Push(std::move(ping));
}

void Head::Heartbeat(AgentIndex index, const dragon::v1::Heartbeat& beat) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!membership_.Live(index)) return;  // a fenced incarnation
  Agent& agent = agents_[index];
  const NodeState before = membership_.member(index).state;
  membership_.Answered(index, beat.ping_seq());
  agent.last_heartbeat_us = NowMicros();
  agent.ready_workers = beat.ready_workers();
  if (beat.has_load()) {
    agent.load = beat.load();
  } else {
    agent.load.reset();  // unset: not measured, so nothing old is shown as current
  }
  membership_.SetPoolUsage(index, beat.shm_pool_free_bytes(), beat.shm_pool_blocks());
  if (before == NodeState::kJoining && membership_.Schedulable(index)) {
    scheduler_.SetPaused(index, false);
    spdlog::info("agent {} (incarnation {}) ready", agent.info.node_id(), agent.incarnation);
    DispatchLocked();
  }
}

void Head::ApplyUpdate(AgentIndex index, dragon::v1::AgentUpdate* update) {
  const int64_t now = NowMicros();
  std::lock_guard<std::mutex> lock(mu_);
  Agent& agent = agents_[index];
  if (!membership_.Live(index)) {
    // Fenced: whatever it still says is stale and must not be delivered.
    spdlog::info("agent {} incarnation {} is {}: ignoring its update ({} results)",
                 agent.info.node_id(), agent.incarnation,
                 NodeStateName(membership_.member(index).state), update->results_size());
    return;
  }
  membership_.Heard(index);
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
    if (task->resources && !task->resources->gang_lost.empty() &&
        GangBrokenResultLocked(task, result, now, &results)) {
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
    // Placed tasks (multi-core, MPI) say nothing about the plain flood's pace.
    if (!task->placed() && result.start_us() > 0 && result.outcome() != dragon::v1::CANCELED &&
        (result.end_us() > result.start_us() ||
         (completed && result.end_us() == result.start_us()))) {
      scheduler_.ObserveRuntime(index, result.end_us() - result.start_us());
    }
    ++agent.tasks_done;
    // Finish at the agent's end time when it gave one (never before the start).
    const int64_t end = result.end_us() > 0 ? std::max(result.end_us(), task->running_us) : now;
    FinishLocked(task, StateForOutcome(result.outcome()), result.outcome(), result.failure(),
                 std::move(*result.mutable_error()), std::move(*result.mutable_data()), end,
                 &results);
  }
  for (uint64_t id : update->released()) {
    Task* task = table_.Find(id);
    if (task != nullptr && task->agent == index && task->state == dragon::v1::SCHEDULED) {
      RequeueLocked(task, index, now);
    }
  }
  if (update->task_io_size() > 0 || update->task_logs_size() > 0 || !io_channels_.empty()) {
    TaskIOUpdateLocked(index, update);
  }
  if (agent.removing) FinishRemovalLocked(index);
  // New work goes out before the results: waking the sessions' writers first could cost
  // this thread its CPU (two cores, everything busy) while the freed workers wait.
  DispatchLocked();
  SendResultsLocked(&results);
  ForgetOldFinishedLocked();
}

void Head::FinishRemovalLocked(AgentIndex index) {
  Agent& agent = agents_[index];
  if (!agent.tasks.empty() || !membership_.Live(index)) return;
  dragon::v1::HeadToAgent bye;
  bye.mutable_shutdown()->set_reason(absl::StrCat("node ", agent.info.node_id(), " is removed"));
  if (agent.link.outbox->Push(std::move(bye))) {
    spdlog::info("node {} runs nothing any more: its agent is told to leave", agent.info.node_id());
  }
}

int Head::AskBackUnstartedLocked(AgentIndex index, const std::string& reason) {
  Agent& agent = agents_[index];
  dragon::v1::HeadToAgent reclaim;
  for (TaskId id : agent.tasks) {
    const Task* task = table_.Find(id);
    if (task != nullptr && task->state == dragon::v1::SCHEDULED) {
      reclaim.mutable_reclaim()->add_task_ids(id);
    }
  }
  const int asked = reclaim.reclaim().task_ids_size();
  if (asked > 0) {
    reclaim.mutable_reclaim()->set_reason(reason);
    agent.link.outbox->Push(std::move(reclaim));
  }
  return asked;
}

void Head::DrainEndingLocked() {
  for (AgentIndex index : membership_.TakeEnding()) {
    scheduler_.SetPaused(index, true);
    const Member& member = membership_.member(index);
    const Agent& agent = agents_[index];
    const std::string ends = absl::FormatDuration(absl::Trunc(
        member.allocation_end - membership_.clock()->Now(), absl::Seconds(1)));
    const int asked = AskBackUnstartedLocked(
        index, absl::StrCat("node ", agent.info.node_id(), "'s allocation ends in ", ends));
    spdlog::info("node {}{}: its allocation ends in {} (drain window {} ms): draining, no new "
                 "tasks; {} task(s) not started asked back, {} running may finish",
                 agent.info.node_id(),
                 agent.info.block_id().empty() ? "" : absl::StrCat(" (block ", agent.info.block_id(), ")"),
                 ends, agent.info.drain_before_end_ms(), asked, agent.tasks.size() - asked);
  }
}

absl::StatusOr<dragon::v1::NodeInfo> Head::RemoveNode(const std::string& node_id) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<AgentIndex> index = membership_.SetDrain(node_id, true);
  if (!index.ok()) return index.status();
  scheduler_.SetPaused(*index, true);
  Agent& agent = agents_[*index];
  agent.removing = true;
  AskBackUnstartedLocked(*index, absl::StrCat("node ", node_id, " is being removed"));
  spdlog::info("node {} is being removed: no new tasks; it leaves once its {} task(s) end",
               node_id, agent.tasks.size());
  FinishRemovalLocked(*index);
  dragon::v1::NodeInfo info;
  FillNodeInfoLocked(*index, &info);
  return info;
}

void Head::AgentLost(AgentIndex index, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  ResultsBySession results;
  // Gone when the head asked for it (shutdown, removal); any other end is a loss.
  const bool left = shutting_down_ || agents_[index].removing;
  if (left) {
    membership_.Leave(index, why);
  } else {
    membership_.Lose(index, why);
  }
  EndAgentLocked(index, membership_.member(index).reason,
                 left ? AgentEnd::kLeftOnRequest : AgentEnd::kStreamEnded, &results);
  SendResultsLocked(&results);
  DispatchLocked();
  ForgetOldFinishedLocked();
}

void Head::RequeueLocked(Task* task, AgentIndex agent, int64_t now) {
  (void)agent;  // task->agent; a gang's members are let go as well
  UnplaceLocked(task);
  (void)table_.Transition(task->id, dragon::v1::PENDING, now);
  EnqueueLocked(task, /*front=*/true);
}

void Head::RetryOrFailLocked(Task* task, AgentIndex index, const std::string& why, int64_t now,
                             ResultsBySession* results) {
  const Agent& agent = agents_[index];
  auto session = sessions_.find(task->session);
  const uint32_t allowed = session != sessions_.end() ? session->second.infra_retries : 0;
  if (task->infra_attempts < allowed) {
    ++task->infra_attempts;
    spdlog::warn("task {}: node {} (incarnation {}) was lost while it ran in worker pid {} ({}); "
                 "running it again elsewhere (infrastructure retry {} of {})",
                 task->id, agent.info.node_id(), agent.incarnation, task->worker_pid, why,
                 task->infra_attempts, allowed);
    RequeueLocked(task, index, now);
    return;
  }
  FinishLocked(task, dragon::v1::FAILED, dragon::v1::SYSTEM_ERROR, dragon::v1::FAILURE_NODE_LOST,
               absl::StrCat("task ", task->id, " on node ", agent.info.node_id(), " (incarnation ",
                            agent.incarnation, "): worker pid ", task->worker_pid,
                            " lost with its node (", why, "); it ran ", task->infra_attempts + 1,
                            " time(s) and infrastructure retries are spent (", allowed,
                            " allowed: DragonExecutor(infra_retries=...) or dragond "
                            "--infra-retries)"),
               "", now, results);
}

void Head::EndAgentLocked(AgentIndex index, const std::string& why, AgentEnd how,
                          ResultsBySession* results) {
  Agent& agent = agents_[index];
  if (agent.ended) return;
  agent.ended = true;
  const int64_t now = NowMicros();
  agent.link.outbox->Close();
  // A stream that ended by itself finishes on its own; one the head gives up
  // on is cut, so that the agent (hung, or about to be replaced) can deliver
  // nothing more over it.
  if ((how == AgentEnd::kSilent || how == AgentEnd::kReplaced) && agent.link.drop) {
    agent.link.drop();
  }
  EndTaskIOOfAgentLocked(index, why);
  std::vector<TaskId> held(agent.tasks.begin(), agent.tasks.end());
  // Re-queued at the front in reverse, so that the oldest ends up first.
  std::sort(held.rbegin(), held.rend());
  int requeued = 0, retried = 0, failed = 0;
  for (TaskId id : held) {
    Task* task = table_.Find(id);
    if (task == nullptr) continue;  // held tasks are unfinished, never forgotten; defensive
    if (task->agent != index) {
      // A hold-only share of a gang led by another node.
      GangMemberLostLocked(task, index, why);
      continue;
    }
    if (task->state == dragon::v1::SCHEDULED) {
      RequeueLocked(task, index, now);
      ++requeued;
    } else if (task->state == dragon::v1::RUNNING) {
      const uint8_t before = task->infra_attempts;
      RetryOrFailLocked(task, index, why, now, results);
      ++(task->infra_attempts > before ? retried : failed);
    }
  }
  agent.tasks.clear();
  scheduler_.RemoveAgent(index);
  if (how == AgentEnd::kLeftOnRequest) {
    spdlog::info("agent {} (incarnation {}) disconnected ({})", agent.info.node_id(),
                 agent.incarnation, why);
  } else {
    spdlog::error("agent {} (incarnation {}, pid {} on {}) lost ({}): {} task(s) re-queued, {} "
                  "running task(s) to run again elsewhere, {} failed",
                  agent.info.node_id(), agent.incarnation, agent.info.pid(), agent.info.host(), why,
                  requeued, retried, failed);
    if (how != AgentEnd::kReplaced && on_node_loss_) {
      on_node_loss_(NodeLoss{agent.info.node_id(), agent.incarnation, agent.info.pid(),
                             agent.info.host(), why});
    }
  }
  agents_cv_.notify_all();
}

void Head::Tick() {
  std::lock_guard<std::mutex> lock(mu_);
  ResultsBySession results;
  for (AgentIndex index : membership_.ExpireSilent()) {
    EndAgentLocked(index, membership_.member(index).reason, AgentEnd::kSilent, &results);
  }
  for (auto [index, seq] : membership_.TakeDuePings()) PingLocked(index, seq);
  DrainEndingLocked();
  FailQueuedWithoutNodesLocked(&results);
  SendResultsLocked(&results);
  FlushHeldAcceptedLocked();
  DispatchLocked();
  ForgetOldFinishedLocked();
}

void Head::FailQueuedWithoutNodesLocked(ResultsBySession* results) {
  if (scheduler_.queued() == 0 || !membership_.NoNodeGraceExpired()) return;
  std::string reason = membership_.NoNodeReason();
  if (!launch_problem_.empty()) absl::StrAppend(&reason, "; the launcher: ", launch_problem_);
  const int64_t now = NowMicros();
  size_t failed = 0;
  for (TaskId id : scheduler_.TakeQueued()) {
    Task* task = table_.Find(id);
    if (task == nullptr || task->state != dragon::v1::PENDING) continue;
    FinishLocked(task, dragon::v1::FAILED, dragon::v1::SYSTEM_ERROR, dragon::v1::FAILURE_NO_NODES,
                 absl::StrCat("task ", id, " cannot run: ", reason), "", now, results);
    ++failed;
  }
  if (failed > 0) spdlog::error("failed {} queued task(s): {}", failed, reason);
}

absl::StatusOr<dragon::v1::NodeInfo> Head::DrainNode(const std::string& node_id, bool drain) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<AgentIndex> index = membership_.SetDrain(node_id, drain);
  if (!index.ok()) return index.status();
  scheduler_.SetPaused(*index, !membership_.Schedulable(*index));
  if (drain) {
    const int asked = AskBackUnstartedLocked(*index, absl::StrCat("node ", node_id, " is draining"));
    spdlog::info("node {} draining: no new tasks; {} task(s) not started asked back", node_id,
                 asked);
  } else {
    spdlog::info("node {} undrained", node_id);
    DispatchLocked();
  }
  dragon::v1::NodeInfo info;
  FillNodeInfoLocked(*index, &info);
  return info;
}

void Head::SetNodeLossObserver(std::function<void(const NodeLoss&)> observer) {
  std::lock_guard<std::mutex> lock(mu_);
  on_node_loss_ = std::move(observer);
}

void Head::NoteLaunchProblem(const std::string& problem) {
  std::lock_guard<std::mutex> lock(mu_);
  launch_problem_ = problem;
}

void Head::ExpectNodes() {
  std::lock_guard<std::mutex> lock(mu_);
  membership_.ExpectNodes();
}

}  // namespace dragon::daemon
