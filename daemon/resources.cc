#include "daemon/resources.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace dragon::daemon {
namespace {

uint32_t CeilDiv(uint32_t a, uint32_t b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<TaskResources> NormalizeRequest(const dragon::v1::ResourceRequest& r,
                                               const ClusterFacts& facts) {
  const uint32_t largest_node_cores = facts.largest_cores;
  TaskResources out;
  const uint32_t cores = r.cores() == 0 ? 1 : r.cores();
  if (cores > kMaxCoresPerTask) {
    return absl::InvalidArgumentError(
        absl::StrCat("cores ", r.cores(), " is more than the ", kMaxCoresPerTask, " allowed"));
  }
  if (r.nodes() > kMaxNodesPerTask) {
    return absl::InvalidArgumentError(
        absl::StrCat("nodes ", r.nodes(), " is more than the ", kMaxNodesPerTask, " allowed"));
  }
  if (r.ranks() > kMaxRanksPerTask || r.ranks_per_node() > kMaxRanksPerTask) {
    return absl::InvalidArgumentError(absl::StrCat("ranks ", r.ranks(), " / ranks_per_node ",
                                                   r.ranks_per_node(), " is more than the ",
                                                   kMaxRanksPerTask, " allowed"));
  }
  std::vector<std::string> hosts;
  for (const std::string& h : r.hosts()) {
    if (h.empty()) return absl::InvalidArgumentError("hosts holds an empty name");
    if (std::find(hosts.begin(), hosts.end(), h) == hosts.end()) hosts.push_back(h);
  }
  out.mpi = r.nodes() > 0 || r.ranks_per_node() > 0 || r.ranks() > 0;
  out.placed = out.mpi || r.cores() > 0 || r.memory_bytes() > 0 || r.gpus() > 0 || !hosts.empty();
  out.need.hosts = hosts;
  out.walltime_s = r.walltime_s();
  out.priority = r.priority();
  uint32_t nodes = 1, ppn = 1, ranks = 1;
  if (!hosts.empty() && r.nodes() > hosts.size()) {
    return absl::InvalidArgumentError(absl::StrCat("nodes (", r.nodes(), ") is more than the ",
                                                   hosts.size(), " hosts named"));
  }
  if (out.mpi) {
    uint32_t n = r.nodes();
    const uint32_t p = r.ranks_per_node(), k = r.ranks();
    if (n == 0 && !hosts.empty()) {
      // The named hosts, one node each (no more nodes than ranks).
      n = static_cast<uint32_t>(hosts.size());
      if (k > 0 && k < n) n = k;
      if (p > 0 && k > 0) n = std::min(n, CeilDiv(k, p));
    }
    if (n > 0 && p > 0 && k > 0) {
      if (static_cast<uint64_t>(n) * p != k) {
        return absl::InvalidArgumentError(
            absl::StrCat("ranks (", k, ") must equal nodes (", n, ") x ranks_per_node (", p,
                         ") = ", static_cast<uint64_t>(n) * p, " when all three are given"));
      }
      nodes = n, ppn = p, ranks = k;
    } else if (n > 0 && p > 0) {
      nodes = n, ppn = p;
      if (static_cast<uint64_t>(n) * p > kMaxRanksPerTask) {
        return absl::InvalidArgumentError(absl::StrCat("nodes (", n, ") x ranks_per_node (", p,
                                                       ") is more than the ", kMaxRanksPerTask,
                                                       " ranks allowed"));
      }
      ranks = n * p;
    } else if (n > 0 && k > 0) {
      if (k < n) {
        return absl::InvalidArgumentError(
            absl::StrCat("ranks (", k, ") must be at least nodes (", n, "): one rank per node"));
      }
      nodes = n, ranks = k, ppn = CeilDiv(k, n);
    } else if (n > 0) {
      nodes = n, ppn = 1, ranks = n;
    } else if (p > 0 && k > 0) {
      ppn = p, ranks = k, nodes = CeilDiv(k, p);
    } else if (p > 0) {
      nodes = 1, ppn = p, ranks = p;
    } else {
      // Ranks alone: as few nodes as the largest node allows.
      ranks = k;
      const uint32_t per_node = largest_node_cores / cores;
      nodes = per_node == 0 ? 1 : CeilDiv(k, per_node);
      if (r.oversubscribe() && facts.nodes > 0) nodes = std::min(nodes, facts.nodes);
      ppn = CeilDiv(k, nodes);
    }
    if (nodes > kMaxNodesPerTask) {
      return absl::InvalidArgumentError(
          absl::StrCat("the request makes ", nodes, " nodes, more than the ", kMaxNodesPerTask,
                       " allowed"));
    }
    out.ranks_per_node = ppn;
    out.ranks = ranks;
  }
  uint64_t per_node_cores = static_cast<uint64_t>(ppn) * cores;
  if (r.oversubscribe() && largest_node_cores > 0) {
    per_node_cores = std::min<uint64_t>(per_node_cores, largest_node_cores);
  }
  if (per_node_cores > kMaxCoresPerTask) {
    return absl::InvalidArgumentError(
        absl::StrCat("ranks_per_node (", ppn, ") x cores (", cores, ") = ", per_node_cores,
                     " cores per node is more than the ", kMaxCoresPerTask, " allowed"));
  }
  out.need.cores = static_cast<uint32_t>(per_node_cores);
  out.need.memory = r.memory_bytes();
  out.need.gpus = r.gpus();
  out.need.nodes = nodes;
  return out;
}

ResourcePool::Node* ResourcePool::NodeOf(AgentIndex agent) {
  if (agent < 0 || static_cast<size_t>(agent) >= nodes_.size()) return nullptr;
  return &nodes_[agent];
}

const ResourcePool::Node* ResourcePool::NodeOf(AgentIndex agent) const {
  if (agent < 0 || static_cast<size_t>(agent) >= nodes_.size()) return nullptr;
  return &nodes_[agent];
}

void ResourcePool::AddAgent(AgentIndex agent, uint32_t cores, uint64_t memory, uint32_t gpus,
                            bool paused, std::string host, std::string name) {
  if (agent < 0) return;
  if (static_cast<size_t>(agent) >= nodes_.size()) nodes_.resize(agent + 1);
  Node& n = nodes_[agent];
  n = Node{};
  n.present = true;
  n.paused = paused;
  n.cores = cores;
  n.memory = memory;
  n.gpus = gpus;
  n.cpu_used.assign(cores, false);
  n.gpu_used.assign(gpus, false);
  n.host = std::move(host);
  n.name = std::move(name);
}

void ResourcePool::RemoveAgent(AgentIndex agent) {
  Node* n = NodeOf(agent);
  if (n == nullptr || !n->present) return;
  if (n->reserved) DropReservation();
  *n = Node{};
}

void ResourcePool::SetPaused(AgentIndex agent, bool paused) {
  Node* n = NodeOf(agent);
  if (n == nullptr || !n->present) return;
  n->paused = paused;
  if (paused && n->reserved) DropReservation();
}

void ResourcePool::Enqueue(TaskId task, const ResourceNeed& need, int32_t priority, bool front) {
  const Key key{-static_cast<int64_t>(priority), front ? next_front_-- : next_back_++};
  queue_.emplace(key, Waiting{task, need});
}

std::vector<TaskId> ResourcePool::TakeQueued() {
  std::vector<TaskId> out;
  out.reserve(queue_.size());
  for (auto& [key, w] : queue_) out.push_back(w.task);
  queue_.clear();
  DropReservation();
  return out;
}

void ResourcePool::DropReservation() {
  if (!reservation_) return;
  for (AgentIndex a : reservation_->agents) {
    if (Node* n = NodeOf(a)) n->reserved = false;
  }
  reservation_.reset();
}

std::vector<AgentIndex> ResourcePool::Choose(const ResourceNeed& need,
                                             bool include_reserved) const {
  // Best fit: fewest free cores left over, then the lowest index.
  std::vector<std::pair<uint32_t, AgentIndex>> fit;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    if (!n.usable() || (n.reserved && !include_reserved) || !n.Allowed(need) || !n.Fits(need)) {
      continue;
    }
    fit.emplace_back(n.cores - n.cores_used - need.cores, static_cast<AgentIndex>(i));
  }
  if (fit.size() < need.nodes) return {};
  std::partial_sort(fit.begin(), fit.begin() + need.nodes, fit.end());
  std::vector<AgentIndex> out;
  out.reserve(need.nodes);
  for (uint32_t i = 0; i < need.nodes; ++i) out.push_back(fit[i].second);
  return out;
}

Placement ResourcePool::Grant(TaskId task, const ResourceNeed& need,
                              const std::vector<AgentIndex>& agents) {
  Placement p;
  p.task = task;
  for (AgentIndex a : agents) {
    Node& n = nodes_[a];
    NodeGrant g;
    g.agent = a;
    for (uint32_t c = 0; c < n.cores && g.cpus.size() < need.cores; ++c) {
      if (!n.cpu_used[c]) {
        n.cpu_used[c] = true;
        g.cpus.push_back(c);
      }
    }
    for (uint32_t d = 0; d < n.gpus && g.gpus.size() < need.gpus; ++d) {
      if (!n.gpu_used[d]) {
        n.gpu_used[d] = true;
        g.gpus.push_back(d);
      }
    }
    g.memory = need.memory;
    n.cores_used += need.cores;
    n.gpus_used += need.gpus;
    n.memory_used += need.memory;
    p.nodes.push_back(std::move(g));
  }
  granted_[task] = p;
  return p;
}

std::vector<AgentIndex> ResourcePool::Release(TaskId task) {
  std::vector<AgentIndex> touched;
  auto it = granted_.find(task);
  if (it == granted_.end()) return touched;
  for (const NodeGrant& g : it->second.nodes) {
    touched.push_back(g.agent);
    Node* n = NodeOf(g.agent);
    if (n == nullptr || !n->present) continue;  // removed: nothing left to give back
    for (uint32_t c : g.cpus) n->cpu_used[c] = false;
    for (uint32_t d : g.gpus) n->gpu_used[d] = false;
    n->cores_used -= static_cast<uint32_t>(g.cpus.size());
    n->gpus_used -= static_cast<uint32_t>(g.gpus.size());
    n->memory_used -= g.memory;
  }
  granted_.erase(it);
  return touched;
}

void ResourcePool::Reserve(const Key& key, const Waiting& w) {
  const ResourceNeed& need = w.need;
  // The nodes whose totals hold it, the most free cores first (the soonest
  // to empty, as far as anyone can tell without runtimes).
  std::vector<std::pair<int64_t, AgentIndex>> can;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    if (!n.usable() || !n.Allowed(need) || !n.FitsEmpty(need)) continue;
    can.emplace_back(-static_cast<int64_t>(n.cores - n.cores_used), static_cast<AgentIndex>(i));
  }
  if (can.size() < need.nodes) return;  // not enough nodes now (lost ones may come back)
  std::partial_sort(can.begin(), can.begin() + need.nodes, can.end());
  Reservation r;
  r.task = w.task;
  r.key = key;
  for (uint32_t i = 0; i < need.nodes; ++i) {
    r.agents.push_back(can[i].second);
    nodes_[can[i].second].reserved = true;
  }
  reservation_ = std::move(r);
}

bool ResourcePool::AnyFreeUnreserved() const {
  for (const Node& n : nodes_) {
    if (n.usable() && !n.reserved && n.cores_used < n.cores) return true;
  }
  return false;
}

std::vector<Placement> ResourcePool::Assign(const std::function<bool(TaskId)>& still_pending) {
  std::vector<Placement> out;
  // The reserved task first, wherever it is in the queue (tasks of a higher
  // priority that arrived since may be ahead of it).
  if (reservation_) {
    auto it = queue_.find(reservation_->key);
    if (it == queue_.end() || it->second.task != reservation_->task) {
      DropReservation();
    } else if (!still_pending(it->second.task)) {
      DropReservation();
      queue_.erase(it);
    } else if (std::vector<AgentIndex> chosen = Choose(it->second.need, true); !chosen.empty()) {
      DropReservation();
      out.push_back(Grant(it->second.task, it->second.need, chosen));
      queue_.erase(it);
    }
  }
  int blocked = 0;
  for (auto it = queue_.begin(); it != queue_.end() && blocked < kMaxBlockedScan;) {
    const Waiting& w = it->second;
    if (reservation_ && reservation_->task == w.task) {  // tried above
      ++it;
      continue;
    }
    if (!still_pending(w.task)) {
      it = queue_.erase(it);
      continue;
    }
    std::vector<AgentIndex> chosen = Choose(w.need, /*include_reserved=*/false);
    if (!chosen.empty()) {
      out.push_back(Grant(w.task, w.need, chosen));
      it = queue_.erase(it);
      continue;
    }
    if (!reservation_) {
      // The first task that does not fit. It may fit on reserved-free nodes
      // only once they drain: reserve them.
      Reserve(it->first, w);
    }
    ++blocked;
    ++it;
    // Nothing behind it can be placed: every unreserved core is taken.
    if (!AnyFreeUnreserved()) break;
  }
  return out;
}

Capacity ResourcePool::CapacityFor(const ResourceNeed& need) const {
  Capacity c;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    if (!n.present) continue;
    const AgentIndex a = static_cast<AgentIndex>(i);
    ++c.nodes;
    if (!n.Allowed(need)) continue;
    ++c.allowed_nodes;
    if (n.FitsEmpty(need)) ++c.fitting_nodes;
    if (c.max_cores_agent == kNoAgent || n.cores > c.max_cores) {
      c.max_cores = n.cores;
      c.max_cores_agent = a;
    }
    if (c.max_memory_agent == kNoAgent || n.memory > c.max_memory) {
      c.max_memory = n.memory;
      c.max_memory_agent = a;
    }
    if (c.max_gpus_agent == kNoAgent || n.gpus > c.max_gpus) {
      c.max_gpus = n.gpus;
      c.max_gpus_agent = a;
    }
  }
  return c;
}

ClusterFacts ResourcePool::Facts() const {
  ClusterFacts f;
  for (const Node& n : nodes_) {
    if (!n.present) continue;
    f.largest_cores = std::max(f.largest_cores, n.cores);
    ++f.nodes;
  }
  return f;
}

uint32_t ResourcePool::held_cores(AgentIndex agent) const {
  const Node* n = NodeOf(agent);
  return n == nullptr ? 0 : n->cores_used;
}

uint32_t ResourcePool::free_cores(AgentIndex agent) const {
  const Node* n = NodeOf(agent);
  return n == nullptr || !n->present ? 0 : n->cores - n->cores_used;
}

uint64_t ResourcePool::free_memory(AgentIndex agent) const {
  const Node* n = NodeOf(agent);
  return n == nullptr || !n->present ? 0 : n->memory - n->memory_used;
}

uint32_t ResourcePool::free_gpus(AgentIndex agent) const {
  const Node* n = NodeOf(agent);
  return n == nullptr || !n->present ? 0 : n->gpus - n->gpus_used;
}

const Placement* ResourcePool::placement(TaskId task) const {
  auto it = granted_.find(task);
  return it == granted_.end() ? nullptr : &it->second;
}

std::optional<std::pair<TaskId, std::vector<AgentIndex>>> ResourcePool::reservation() const {
  if (!reservation_) return std::nullopt;
  return std::make_pair(reservation_->task, reservation_->agents);
}

}  // namespace dragon::daemon
