// The Head's side of per-task resources: admission of a ResourceRequest
// (normalized, refused when malformed or when no node of the head could
// ever hold it), placement of the tasks that ask for cores, memory, GPUs or
// an MPI gang (daemon/resources.h has the policy), their grants, and what a
// gang does when one of its nodes is lost. See head.h.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "daemon/head.h"
#include "daemon/resources.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {
namespace {

std::string Bytes(uint64_t b) {
  if (b >= (uint64_t{1} << 30)) return absl::StrFormat("%.1f GiB", b / double(uint64_t{1} << 30));
  if (b >= (uint64_t{1} << 20)) return absl::StrFormat("%.0f MiB", b / double(uint64_t{1} << 20));
  return absl::StrCat(b, " bytes");
}

}  // namespace

std::string Head::AdmitResourcesLocked(Task* task, const dragon::v1::ResourceRequest& request,
                                       dragon::v1::FailureKind* kind) {
  absl::StatusOr<TaskResources> normalized =
      NormalizeRequest(request, scheduler_.pool().Facts());
  task->resources = std::make_unique<TaskResources>(normalized.ok() ? *std::move(normalized)
                                                                    : TaskResources{});
  task->resources->request = request;
  if (!normalized.ok()) {
    *kind = dragon::v1::FAILURE_REFUSED;
    return absl::StrCat("its resource request is invalid: ", normalized.status().message());
  }
  if (task->resources->placed && scheduler_.pool().Unsatisfiable(task->resources->need)) {
    *kind = dragon::v1::FAILURE_UNSATISFIABLE;
    return UnsatisfiableTextLocked(*task);
  }
  return "";
}

std::string Head::UnsatisfiableTextLocked(const Task& task) const {
  const TaskResources& r = *task.resources;
  const ResourceNeed& need = r.need;
  const Capacity c = scheduler_.pool().CapacityFor(need);
  std::string asked = absl::StrCat(need.cores, " core(s)");
  if (r.mpi) {
    absl::StrAppend(&asked, " (", r.ranks_per_node, " rank(s) x ",
                    r.request.cores() == 0 ? 1 : r.request.cores(), " core(s))");
  }
  if (need.memory > 0) absl::StrAppend(&asked, ", ", Bytes(need.memory), " of memory");
  if (need.gpus > 0) absl::StrAppend(&asked, ", ", need.gpus, " GPU(s)");
  absl::StrAppend(&asked, need.nodes > 1 ? absl::StrCat(" on each of ", need.nodes, " nodes")
                                         : std::string(" on one node"));
  std::string text = absl::StrCat(
      "no node (or set of nodes) of this head can ever run it: it asks for ", asked, "; ",
      c.fitting_nodes, " of the head's ", c.nodes, " node(s) have that much");
  if (!need.hosts.empty()) {
    absl::StrAppend(&text, " (", c.allowed_nodes, " of them are among the hosts it names: ",
                    absl::StrJoin(need.hosts, ","), ")");
  }
  if (c.allowed_nodes > 0) {
    absl::StrAppend(&text, ". The largest: ", c.max_cores, " core(s) (node ",
                    NodeNameLocked(c.max_cores_agent), "), ", Bytes(c.max_memory),
                    " of memory (node ", NodeNameLocked(c.max_memory_agent), "), ", c.max_gpus,
                    " GPU(s)",
                    c.max_gpus > 0
                        ? absl::StrCat(" (node ", NodeNameLocked(c.max_gpus_agent), ")")
                        : std::string());
  }
  absl::StrAppend(&text, " (dragonctl nodes)");
  if (r.mpi && !r.request.oversubscribe()) {
    absl::StrAppend(&text, "; to run more ranks than there are cores, allow oversubscribe "
                           "(@mpi_app Policy(oversubscribe=True))");
  }
  return text;
}

void Head::EnqueueLocked(Task* task, bool front) {
  if (!task->resources) {
    front ? scheduler_.Requeue(task->id, 0, task->data_agent)
          : scheduler_.Enqueue(task->id, 0, task->data_agent);
    return;
  }
  TaskResources& r = *task->resources;
  if (front) {  // taken back: what it held is history
    r.grant.Clear();
    r.members.clear();
    r.gang_lost.clear();
  }
  if (r.placed) {
    scheduler_.EnqueuePlaced(task->id, r.need, r.priority, front);
  } else if (front) {
    scheduler_.Requeue(task->id, r.priority, task->data_agent);
  } else {
    scheduler_.Enqueue(task->id, r.priority, task->data_agent);
  }
}

void Head::UnplaceLocked(Task* task) {
  if (task->agent == kNoAgent) return;
  if (!task->placed()) {
    scheduler_.Release(task->agent);
    agents_[task->agent].tasks.erase(task->id);
    return;
  }
  scheduler_.ReleasePlaced(task->id);
  agents_[task->agent].tasks.erase(task->id);
  TaskResources& r = *task->resources;
  for (AgentIndex member : r.members) {
    if (agents_[member].tasks.erase(task->id) == 0) continue;
    if (!membership_.Live(member)) continue;
    // Ends the member's hold (it reports nothing for a hold-only task).
    dragon::v1::HeadToAgent msg;
    msg.mutable_cancel()->add_task_ids(task->id);
    msg.mutable_cancel()->set_reason(absl::StrCat("task ", task->id, " ended on node ",
                                                  NodeNameLocked(task->agent),
                                                  ", the leader of its gang"));
    agents_[member].link.outbox->Push(std::move(msg));
  }
  r.members.clear();
}

void Head::DispatchPlacedLocked(int64_t now,
                                std::map<AgentIndex, dragon::v1::HeadToAgent>* batches) {
  std::vector<Placement> placements = scheduler_.AssignPlaced([this](TaskId id) {
    const Task* task = table_.Find(id);
    return task != nullptr && task->state == dragon::v1::PENDING;
  });
  for (Placement& p : placements) {
    Task* task = table_.Find(p.task);
    TaskResources& r = *task->resources;
    (void)table_.Transition(p.task, dragon::v1::SCHEDULED, now);
    task->agent = p.nodes[0].agent;
    r.members.clear();
    dragon::v1::MpiPlacement mpi;
    if (r.mpi) {
      for (const NodeGrant& g : p.nodes) mpi.add_hosts(agents_[g.agent].info.host());
      mpi.set_ranks_per_node(r.ranks_per_node);
      mpi.set_ranks(r.ranks);
      mpi.set_launcher_options(r.request.launcher_options());
    }
    auto session = sessions_.find(task->session);
    for (size_t i = 0; i < p.nodes.size(); ++i) {
      const NodeGrant& g = p.nodes[i];
      Agent& agent = agents_[g.agent];
      agent.tasks.insert(p.task);
      if (i > 0) r.members.push_back(g.agent);
      dragon::v1::ResourceGrant grant;
      for (uint32_t c : g.cpus) grant.add_cpus(c);
      for (uint32_t d : g.gpus) grant.add_gpus(agent.info.gpus(static_cast<int>(d)));
      grant.set_memory_bytes(g.memory);
      grant.set_walltime_s(r.walltime_s);
      if (r.mpi) *grant.mutable_mpi() = mpi;
      grant.set_hold_only(i > 0);
      auto* assignment = (*batches)[g.agent].mutable_tasks()->add_tasks();
      assignment->set_task_id(p.task);
      assignment->set_kind(task->kind);
      if (session != sessions_.end()) assignment->set_cwd(session->second.cwd);
      if (i == 0) {
        assignment->set_payload(task->payload);  // copied: kept for a re-run
        r.grant = grant;
      }
      *assignment->mutable_grant() = std::move(grant);
    }
    if (spdlog::should_log(spdlog::level::debug)) {
      std::vector<std::string> where;
      for (const NodeGrant& g : p.nodes) {
        where.push_back(absl::StrCat(NodeNameLocked(g.agent), " cpus [", absl::StrJoin(g.cpus, ","),
                                     "] gpus [", absl::StrJoin(g.gpus, ","), "]"));
      }
      spdlog::debug("task {} placed: {}", p.task, absl::StrJoin(where, "; "));
    }
  }
}

void Head::GangMemberLostLocked(Task* task, AgentIndex member, const std::string& why) {
  if (!task->resources) return;
  TaskResources& r = *task->resources;
  r.members.erase(std::remove(r.members.begin(), r.members.end(), member), r.members.end());
  agents_[member].tasks.erase(task->id);
  if (!r.gang_lost.empty() || IsTerminal(task->state) || task->state == dragon::v1::PENDING) return;
  r.gang_lost = absl::StrCat("node ", NodeNameLocked(member), " of its gang (led by node ",
                             NodeNameLocked(task->agent), ") was lost: ", why);
  spdlog::warn("task {}: {}; telling the leader to cancel it", task->id, r.gang_lost);
  if (task->agent != kNoAgent && membership_.Live(task->agent)) {
    dragon::v1::HeadToAgent msg;
    msg.mutable_cancel()->add_task_ids(task->id);
    msg.mutable_cancel()->set_reason(r.gang_lost);
    agents_[task->agent].link.outbox->Push(std::move(msg));
  }
}

bool Head::GangBrokenResultLocked(Task* task, const dragon::v1::TaskResult& result, int64_t now,
                                  ResultsBySession* results) {
  // It ended well after all (the member went once its work was done).
  if (result.outcome() == dragon::v1::OK) return false;
  const AgentIndex leader = task->agent;
  const std::string why = task->resources->gang_lost;
  // Never started (a cancel of the queued task): just placed again.
  // (Its start may be in this same update, hence the times.)
  const bool ran = task->state == dragon::v1::RUNNING ||
                   result.outcome() != dragon::v1::CANCELED ||
                   (result.start_us() > 0 && result.end_us() > result.start_us());
  if (!ran) {
    RequeueLocked(task, leader, now);
    return true;
  }
  auto session = sessions_.find(task->session);
  const uint32_t allowed = session != sessions_.end() ? session->second.infra_retries : 0;
  if (task->infra_attempts < allowed) {
    ++task->infra_attempts;
    spdlog::warn("task {}: {}; running the whole gang again (infrastructure retry {} of {})",
                 task->id, why, task->infra_attempts, allowed);
    RequeueLocked(task, leader, now);
    return true;
  }
  if (result.worker_pid() != 0) task->worker_pid = result.worker_pid();
  FinishLocked(task, dragon::v1::FAILED, dragon::v1::SYSTEM_ERROR, dragon::v1::FAILURE_NODE_LOST,
               absl::StrCat("task ", task->id, ": ", why, "; it ran ", task->infra_attempts + 1,
                            " time(s) and infrastructure retries are spent (", allowed,
                            " allowed: DragonExecutor(infra_retries=...) or dragond "
                            "--infra-retries)"),
               "", now, results);
  return true;
}

}  // namespace dragon::daemon
