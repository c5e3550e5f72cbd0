// Decides which agent gets which pending task. Pure bookkeeping, no I/O:
// the Head feeds it queue and capacity changes and ships what it assigns.
#ifndef DRAGON_DAEMON_SCHEDULER_H_
#define DRAGON_DAEMON_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>
#include <vector>

#include "daemon/resources.h"
#include "daemon/task_table.h"

namespace dragon::daemon {

struct Assignment {
  AgentIndex agent;
  TaskId task;
};

// Two paths share each agent. Plain tasks (no resource request, or one that
// names only priority/walltime) take one slot each through the adaptive
// prefetch below, the fast path of floods of tiny tasks. Placed tasks (cores,
// memory, GPUs, MPI) go through the ResourcePool (daemon/resources.h:
// concrete CPU/GPU ids, reservation and backfill, gangs); the cores they hold
// on an agent are taken out of its plain slots, so the two never count the
// same core twice.
class Scheduler {
 public:
  // An agent may hold (1 + prefetch) tasks per worker, so that a worker that
  // finishes finds its next task already on its node instead of waiting a
  // round trip to the head. The prefetch adapts per agent to how long its
  // tasks take: enough queued work per worker to cover kPrefetchWindowUs,
  // between min_prefetch (also the start, before anything is known) and
  // max_prefetch. Long tasks keep it at the minimum, so they spread evenly
  // over nodes; floods of tiny tasks get deep queues and big batches.
  //
  // While an agent's prefetch is above the minimum, it is sent tasks in
  // batches of at least batch() = workers * (prefetch - min_prefetch) / 2,
  // and only once it has that much room. Why: handing a burst out one task
  // at a time to the least loaded agent splits a submitted batch of B tasks
  // into B / agents messages, so the messages per task (and the head's and
  // agents' CPU per task) grow with the number of agents. An agent that
  // waits for that much room still holds min_prefetch plus half its extra
  // prefetch per worker, so its workers never run dry waiting for the refill.
  // At the minimum prefetch (long tasks, or no adaptation) batch() is 1 and
  // tasks spread one at a time exactly as before.
  static constexpr int64_t kPrefetchWindowUs = 2000;
  explicit Scheduler(int min_prefetch = 1, int max_prefetch = 1);

  // Added paused when `paused` (see SetPaused).
  void AddAgent(AgentIndex agent, int workers, bool paused = false);
  // What the agent registered, for placed tasks (call after AddAgent).
  void SetAgentResources(AgentIndex agent, uint32_t cores, uint64_t memory, uint32_t gpus,
                         std::string host = "", std::string name = "");
  // A task of `agent` ran for `runtime_us`; may change its capacity.
  void ObserveRuntime(AgentIndex agent, int64_t runtime_us);
  // Forgets the agent; its tasks are the caller's to re-queue or fail.
  void RemoveAgent(AgentIndex agent);
  // A paused agent is given no task (joining, draining) but keeps its
  // count of assigned tasks, which Release still lowers.
  void SetPaused(AgentIndex agent, bool paused);

  // Plain tasks: higher priority first, then in order of arrival.
  // `data_agent`: the agent whose node holds the task's data (its arguments
  // in that node's shared-memory pool), which Assign prefers; kNoAgent for
  // none, the common case, which costs nothing more than before.
  void Enqueue(TaskId task, int32_t priority = 0, AgentIndex data_agent = kNoAgent) {
    QueueOf(priority).push_back(task);
    NotePreference(task, data_agent);
  }
  // For tasks that were assigned but never started (their node was lost):
  // they go first among their priority, since they have waited longest.
  void Requeue(TaskId task, int32_t priority = 0, AgentIndex data_agent = kNoAgent) {
    QueueOf(priority).push_front(task);
    NotePreference(task, data_agent);
  }

  // Placed tasks (see ResourcePool::Enqueue).
  void EnqueuePlaced(TaskId task, const ResourceNeed& need, int32_t priority, bool front = false) {
    pool_.Enqueue(task, need, priority, front);
  }
  // Places what fits (ResourcePool::Assign) and shrinks the plain slots of
  // the agents that now hold more.
  std::vector<Placement> AssignPlaced(const std::function<bool(TaskId)>& still_pending);
  // A placed task ended or was taken back: its resources are free again.
  void ReleasePlaced(TaskId task);
  const ResourcePool& pool() const { return pool_; }

  // Empties both queues (e.g. to fail everything queued); returns them.
  std::vector<TaskId> TakeQueued();

  // One task assigned to `agent` has ended (or been taken back).
  void Release(AgentIndex agent);

  // Hands queued tasks to agents with room, one at a time to the least
  // loaded (assigned / capacity; ties to the lowest index), so tasks spread
  // evenly. Tasks for which `still_pending` is false (cancelled while queued)
  // are dropped. Each assignment costs O(log agents with room), not
  // O(agents): the agents with room are kept ordered by load.
  //
  // Locality: a task with a data agent goes to that agent whenever it has a
  // free slot (capacity - assigned >= 1, active, not paused), even one too
  // few for a whole batch; otherwise to the least loaded agent like any
  // other task. A preference, never a constraint: a busy data node does not
  // keep tasks waiting while other nodes have room, and a drained, paused or
  // removed one is simply no preference. Tasks still leave the queue in its
  // order (FIFO within a priority): a preferring task at the head whose node
  // is full takes the next batch's slot rather than being skipped, so a
  // flood of preferring tasks cannot starve the others or be starved by
  // them. Tasks without a preference still go out in whole batches.
  std::vector<Assignment> Assign(const std::function<bool(TaskId)>& still_pending);

  size_t queued() const { return plain_queued() + pool_.queued(); }
  size_t plain_queued() const { return queue_.size() + other_queued_; }
  int assigned(AgentIndex agent) const;
  int capacity(AgentIndex agent) const;
  int prefetch(AgentIndex agent) const;
  // Fewest tasks the agent is sent at once (see above); 0 for unknown agents.
  int batch(AgentIndex agent) const;
  // Agents that can take at least one more batch.
  size_t agents_with_room() const { return open_.size(); }
  // Queued tasks that prefer a data agent.
  size_t queued_with_preference() const { return data_agent_.size(); }

 private:
  struct Slot {
    bool active = false;
    bool paused = false;
    int capacity = 0;
    int assigned = 0;
    int workers = 0;
    int held = 0;  // cores placed tasks hold: not plain slots
    int prefetch = 0;
    int batch = 1;
    double mean_runtime_us = -1;  // moving average; < 0 until the first task ends
  };
  // An agent with room, as ordered in open_.
  struct Load {
    int assigned;
    int capacity;
    AgentIndex agent;
  };
  struct LessLoaded {
    bool operator()(const Load& a, const Load& b) const {
      // a.assigned / a.capacity < b.assigned / b.capacity, exactly.
      const int64_t l = int64_t{a.assigned} * b.capacity;
      const int64_t r = int64_t{b.assigned} * a.capacity;
      return l != r ? l < r : a.agent < b.agent;
    }
  };
  // Takes the agent out of open_ (if there) and puts it back if it has room
  // after `change` is applied to its slot.
  template <typename Change>
  void Update(AgentIndex agent, Change change);

  int PrefetchFor(double mean_runtime_us) const;
  // Sets prefetch and what follows from it (capacity, batch).
  void SetPrefetch(Slot* slot, int prefetch) const;
  static bool HasRoom(const Slot& slot) {
    return slot.active && !slot.paused && slot.capacity - slot.assigned >= slot.batch;
  }
  // Room for one more task, if not for a batch: enough for a task that
  // prefers this agent.
  bool HasFreeSlot(AgentIndex agent) const {
    if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return false;
    const Slot& slot = agents_[agent];
    return slot.active && !slot.paused && slot.assigned < slot.capacity;
  }
  void NotePreference(TaskId task, AgentIndex data_agent) {
    if (data_agent != kNoAgent) data_agent_[task] = data_agent;
  }
  std::deque<TaskId>& QueueOf(int32_t priority) {
    if (priority == 0) return queue_;
    ++other_queued_;
    return other_queues_[priority];
  }
  // The queue the next plain task comes from (call only when plain_queued()).
  std::deque<TaskId>& NextQueue();
  // Removes the front of `queue` (NextQueue()'s, not empty).
  void PopFront(std::deque<TaskId>& queue);
  // Removes and returns the next plain task (call only when plain_queued()).
  TaskId PopPlain();
  void SyncHeld(AgentIndex agent);

  int min_prefetch_;
  int max_prefetch_;
  std::deque<TaskId> queue_;  // priority 0, by far the common case
  // Other priorities, highest first (empty deques are erased).
  std::map<int32_t, std::deque<TaskId>, std::greater<int32_t>> other_queues_;
  size_t other_queued_ = 0;
  // The data agent of each queued plain task that has one; tasks without
  // one (nearly all of a flood) are not here, so they cost no memory.
  std::unordered_map<TaskId, AgentIndex> data_agent_;
  ResourcePool pool_;
  std::vector<Slot> agents_;  // indexed by AgentIndex
  std::set<Load, LessLoaded> open_;  // active agents with room for a batch
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_SCHEDULER_H_
