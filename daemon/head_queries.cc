// What dragonctl and clients read of the Head: tasks, nodes, status. See head.h.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "daemon/head.h"

namespace dragon::daemon {

using dragon::v1::TaskState;

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

void Head::FillNodeInfoLocked(AgentIndex index, dragon::v1::NodeInfo* node) const {
  const Agent& agent = agents_[index];
  const Member& member = membership_.member(index);
  const bool live = membership_.Live(index);
  node->set_node_id(agent.info.node_id());
  node->set_host(agent.info.host());
  node->set_cores(agent.info.cores());
  node->set_memory_bytes(agent.info.memory_bytes());
  node->set_agent_pid(agent.info.pid());
  node->set_agent_version(agent.info.agent_version());
  node->set_workers(live ? agent.info.workers() : 0);
  *node->mutable_gpus() = agent.info.gpus();
  // Counted from the task table rather than the last heartbeat, which can
  // be a second old: 'nodes' right after a burst must not show stale work.
  uint32_t running = 0;
  for (TaskId id : agent.tasks) {
    const Task* task = table_.Find(id);
    running += task != nullptr && task->state == dragon::v1::RUNNING;
  }
  const uint32_t assigned = static_cast<uint32_t>(agent.tasks.size());
  node->set_busy_workers(std::min(running, agent.info.workers()));
  node->set_running_tasks(running);
  node->set_queued_tasks(assigned - running);
  node->set_assigned_tasks(assigned);
  node->set_ready_workers(live ? agent.ready_workers : 0);
  node->set_tasks_done(agent.tasks_done);
  node->set_connected_us(agent.connected_us);
  node->set_last_heartbeat_us(agent.last_heartbeat_us);
  node->set_state(NodeStateName(member.state));
  node->set_incarnation(agent.incarnation);
  node->set_removing(agent.removing);
  node->set_block_id(agent.info.block_id());
  node->set_job_end_us(agent.info.job_end_us());
  if (!agent.info.shm_pool_path().empty()) {
    node->set_shm_pool_path(agent.info.shm_pool_path());
    node->set_shm_pool_bytes(agent.info.shm_pool_bytes());
    node->set_shm_pool_free_bytes(member.shm_pool_free_bytes);
    node->set_shm_pool_blocks(member.shm_pool_blocks);
    // The data plane (agent/data_plane.h): how other agents reach this pool.
    node->set_ucx_address(agent.info.ucx_address());
    node->set_shm_pool_rkey(agent.info.shm_pool_rkey());
    node->set_shm_pool_address(agent.info.shm_pool_address());
    node->set_data_socket(agent.info.data_socket());
  }
  // A lost node's last measure is of a host nobody watches any more.
  if (live && agent.load.has_value()) *node->mutable_load() = *agent.load;
  if (!live) node->set_lost_reason(member.reason);
}

dragon::v1::ListNodesReply Head::ListNodes() const {
  std::lock_guard<std::mutex> lock(mu_);
  dragon::v1::ListNodesReply reply;
  for (size_t i = 0; i < agents_.size(); ++i) {
    const AgentIndex index = static_cast<AgentIndex>(i);
    // Earlier incarnations of a node are history; its latest one is the node.
    if (membership_.Latest(agents_[i].info.node_id()) != index) continue;
    FillNodeInfoLocked(index, reply.add_nodes());
  }
  for (const auto& [id, session] : sessions_) {
    if (session.data_peer.has_value()) *reply.add_data_peers() = *session.data_peer;
  }
  return reply;
}

void Head::FillStatus(dragon::v1::StatusReply* reply) const {
  std::lock_guard<std::mutex> lock(mu_);
  reply->set_head_version(options_.version);
  reply->set_protocol_version(kProtocolVersion);
  reply->set_run_id(options_.run_id);
  reply->set_started_us(started_us_);
  uint32_t workers = 0;
  auto* by_state = reply->mutable_nodes_by_state();
  for (size_t i = 0; i < agents_.size(); ++i) {
    const AgentIndex index = static_cast<AgentIndex>(i);
    if (membership_.Latest(agents_[i].info.node_id()) != index) continue;
    ++(*by_state)[NodeStateName(membership_.member(index).state)];
    if (membership_.Live(index)) workers += agents_[i].info.workers();
  }
  reply->set_nodes(static_cast<uint32_t>(membership_.live_count()));
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
  reply->set_auth(options_.auth);
  reply->set_tls(options_.tls);
  reply->set_heartbeat_interval_ms(
      static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.membership.heartbeat_interval)));
  reply->set_heartbeat_timeout_ms(
      static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.membership.heartbeat_timeout)));
  reply->set_infra_retries(options_.infra_retries);
  reply->set_launcher(options_.launcher);
  reply->set_relayed_task_bytes(relayed_task_bytes_);
}

}  // namespace dragon::daemon
