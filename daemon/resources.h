// Per-task resources on the head: what a ResourceRequest means for placement
// (NormalizeRequest), and the ResourcePool, which places the tasks that ask
// for cores, memory, GPUs or an MPI gang onto agents with concrete CPU and
// GPU ids. Pure bookkeeping, no I/O, not thread-safe (the Head's lock).
//
// Plain tasks (no request, or one naming only priority/walltime) never come
// here: they keep the Scheduler's slot path with its adaptive prefetch. They
// use the cores of an agent that no placed task holds (the Scheduler shrinks
// an agent's slots by its held cores; the agent starts a placed task once its
// running plain tasks leave room, and starts no plain task meanwhile).
//
// The policy, reservation with conservative backfill:
//   - The queue is ordered by priority (higher first), then by arrival; a
//     task taken back from a lost node goes before its equals.
//   - Each Assign walks the queue in that order and places every task that
//     fits now, on the nodes that fit it best (fewest free cores left after
//     it, then the lowest index), so large holes stay whole.
//   - The first task that does not fit gets the (single) reservation: the
//     nodes (as many as it needs) whose totals can hold it and which have the
//     most free cores now. A reserved node takes no new placed task except
//     the reserved one: its resources only come free, so the reserved task
//     starts at the latest once the tasks that were already on those nodes
//     end. It may also start earlier anywhere else it fits.
//   - Tasks behind it are backfilled onto the other nodes only. A task placed
//     there holds nothing the reservation waits for, so it cannot delay it:
//     no runtime estimates needed, and no large request starves behind a
//     flood of small ones. The reservation moves on when its task is placed,
//     cancelled, or one of its nodes is paused or lost.
//   - Grants never overlap: a CPU id, a GPU id or a byte of memory of an
//     agent belongs to at most one task at a time (Release gives them back).
//
// A walk looks at no more than kMaxBlockedScan tasks that do not fit (and
// stops once no unreserved node has a free core), so a deep queue of tasks
// that wait costs a bounded amount per dispatch.
#ifndef DRAGON_DAEMON_RESOURCES_H_
#define DRAGON_DAEMON_RESOURCES_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/task_table.h"
#include "proto/common.pb.h"

namespace dragon::daemon {

// Limits of one request (beyond them it is refused as malformed).
inline constexpr uint32_t kMaxCoresPerTask = 1u << 16;
inline constexpr uint32_t kMaxNodesPerTask = 1u << 14;
inline constexpr uint32_t kMaxRanksPerTask = 1u << 20;

// What NormalizeRequest needs to know of the head's nodes.
struct ClusterFacts {
  uint32_t largest_cores = 0;  // the most cores of a present node; 0 = no node yet
  uint32_t nodes = 0;          // present nodes
};

// Checks `request` and works out what it needs per node. MPI: nodes,
// ranks_per_node and ranks complete each other (nodes x ranks_per_node ==
// ranks when all three are given; hosts alone give the nodes; ranks alone:
// as few nodes as the largest node allows, 1 when unknown). With
// `oversubscribe`, ranks may share cores: a node's share is capped at the
// largest node's cores (and ranks alone spread over at most the present
// nodes). InvalidArgument names the field and the values. Leaves
// request/grant/members of the result empty.
absl::StatusOr<TaskResources> NormalizeRequest(const dragon::v1::ResourceRequest& request,
                                               const ClusterFacts& facts);

// What one node of a placement holds.
struct NodeGrant {
  AgentIndex agent = kNoAgent;
  std::vector<uint32_t> cpus;  // indices into the agent's cores, ascending
  std::vector<uint32_t> gpus;  // indices into the agent's GPU list, ascending
  uint64_t memory = 0;
};

struct Placement {
  TaskId task = 0;
  std::vector<NodeGrant> nodes;  // the leader first
};

// Which nodes could ever hold a need, for the error of one that none can.
struct Capacity {
  uint32_t fitting_nodes = 0;  // present nodes whose totals hold the need
  uint32_t nodes = 0;          // present nodes
  uint32_t allowed_nodes = 0;  // present nodes its hosts allow (all without hosts)
  // Largest of each resource over the present nodes, and one agent having it.
  uint32_t max_cores = 0;
  AgentIndex max_cores_agent = kNoAgent;
  uint64_t max_memory = 0;
  AgentIndex max_memory_agent = kNoAgent;
  uint32_t max_gpus = 0;
  AgentIndex max_gpus_agent = kNoAgent;
};

class ResourcePool {
 public:
  static constexpr int kMaxBlockedScan = 64;

  // An agent (incarnation) with what it registered; `host` and `name` (its
  // node id) are what ResourceNeed.hosts may name. Paused agents (joining,
  // draining) get nothing placed but count for Unsatisfiable.
  void AddAgent(AgentIndex agent, uint32_t cores, uint64_t memory, uint32_t gpus,
                bool paused = false, std::string host = "", std::string name = "");
  // Gone for good; what it held is forgotten (Release of its tasks still
  // frees their share on the other agents).
  void RemoveAgent(AgentIndex agent);
  void SetPaused(AgentIndex agent, bool paused);

  // Queues a task; `front`: before the tasks of the same priority (it was
  // taken back from a node).
  void Enqueue(TaskId task, const ResourceNeed& need, int32_t priority, bool front = false);
  // Places what can be placed now (see the policy above). Tasks for which
  // `still_pending` is false are dropped from the queue.
  std::vector<Placement> Assign(const std::function<bool(TaskId)>& still_pending);
  // Gives back everything the task holds; returns the agents it held
  // something on (still present or not). Unknown tasks: nothing.
  std::vector<AgentIndex> Release(TaskId task);

  // How many present nodes could hold `need` if they were empty, and the
  // largest ones; Unsatisfiable is fitting_nodes < need.nodes with nodes > 0.
  Capacity CapacityFor(const ResourceNeed& need) const;
  bool Unsatisfiable(const ResourceNeed& need) const {
    const Capacity c = CapacityFor(need);
    return c.nodes > 0 && c.fitting_nodes < need.nodes;
  }
  // The most cores of any present node (0 when none), and how many there are.
  ClusterFacts Facts() const;

  std::vector<TaskId> TakeQueued();
  size_t queued() const { return queue_.size(); }
  uint32_t held_cores(AgentIndex agent) const;
  uint32_t free_cores(AgentIndex agent) const;
  uint64_t free_memory(AgentIndex agent) const;
  uint32_t free_gpus(AgentIndex agent) const;
  const Placement* placement(TaskId task) const;
  // The task holding the reservation and its nodes, if any.
  std::optional<std::pair<TaskId, std::vector<AgentIndex>>> reservation() const;

 private:
  struct Node {
    bool present = false;
    bool paused = false;
    bool reserved = false;
    uint32_t cores = 0;
    uint64_t memory = 0;
    uint32_t gpus = 0;
    std::vector<bool> cpu_used;
    std::vector<bool> gpu_used;
    uint32_t cores_used = 0;
    uint32_t gpus_used = 0;
    uint64_t memory_used = 0;
    std::string host, name;
    bool usable() const { return present && !paused; }
    bool Allowed(const ResourceNeed& need) const {
      if (need.hosts.empty()) return true;
      for (const std::string& h : need.hosts) {
        if (h == host || h == name) return true;
      }
      return false;
    }
    bool Fits(const ResourceNeed& need) const {
      return cores - cores_used >= need.cores && gpus - gpus_used >= need.gpus &&
             memory - memory_used >= need.memory;
    }
    bool FitsEmpty(const ResourceNeed& need) const {
      return cores >= need.cores && gpus >= need.gpus && memory >= need.memory;
    }
  };
  using Key = std::pair<int64_t, int64_t>;  // (-priority, sequence)
  struct Waiting {
    TaskId task;
    ResourceNeed need;
  };
  struct Reservation {
    TaskId task = 0;
    Key key;
    std::vector<AgentIndex> agents;
  };

  Node* NodeOf(AgentIndex agent);
  const Node* NodeOf(AgentIndex agent) const;
  // The best `need.nodes` usable nodes that fit now (reserved ones only when
  // `include_reserved`), or empty.
  std::vector<AgentIndex> Choose(const ResourceNeed& need, bool include_reserved) const;
  Placement Grant(TaskId task, const ResourceNeed& need, const std::vector<AgentIndex>& agents);
  void Reserve(const Key& key, const Waiting& w);
  void DropReservation();
  bool AnyFreeUnreserved() const;

  std::vector<Node> nodes_;  // indexed by AgentIndex
  std::map<Key, Waiting> queue_;
  int64_t next_back_ = 0;    // sequence for the back of the queue
  int64_t next_front_ = -1;  // sequence for the front (counts down)
  std::unordered_map<TaskId, Placement> granted_;
  std::optional<Reservation> reservation_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_RESOURCES_H_
