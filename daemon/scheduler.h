// Decides which agent gets which pending task. Pure bookkeeping, no I/O:
// the Head feeds it queue and capacity changes and ships what it assigns.
#ifndef DRAGON_DAEMON_SCHEDULER_H_
#define DRAGON_DAEMON_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include "daemon/task_table.h"

namespace dragon::daemon {

struct Assignment {
  AgentIndex agent;
  TaskId task;
};

class Scheduler {
 public:
  // An agent may hold (1 + prefetch_per_worker) tasks per worker, so that a
  // worker that finishes finds its next task already on its node instead of
  // waiting a round trip to the head.
  explicit Scheduler(int prefetch_per_worker = 1);

  void AddAgent(AgentIndex agent, int workers);
  // Forgets the agent; its tasks are the caller's to re-queue or fail.
  void RemoveAgent(AgentIndex agent);

  void Enqueue(TaskId task) { queue_.push_back(task); }
  // For tasks that were assigned but never started (their node was lost):
  // they go first, since they have waited longest.
  void Requeue(TaskId task) { queue_.push_front(task); }

  // One task assigned to `agent` has ended (or been taken back).
  void Release(AgentIndex agent);

  // Hands queued tasks to agents with room, the least loaded first. Tasks for
  // which `still_pending` is false (cancelled while queued) are dropped.
  std::vector<Assignment> Assign(const std::function<bool(TaskId)>& still_pending);

  size_t queued() const { return queue_.size(); }
  int assigned(AgentIndex agent) const;
  int capacity(AgentIndex agent) const;

 private:
  struct Slot {
    bool active = false;
    int capacity = 0;
    int assigned = 0;
  };
  int prefetch_per_worker_;
  std::deque<TaskId> queue_;
  std::vector<Slot> agents_;  // indexed by AgentIndex
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_SCHEDULER_H_
