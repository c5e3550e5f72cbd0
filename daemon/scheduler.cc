#include "daemon/scheduler.h"

namespace dragon::daemon {

Scheduler::Scheduler(int prefetch_per_worker)
    : prefetch_per_worker_(prefetch_per_worker < 0 ? 0 : prefetch_per_worker) {}

void Scheduler::AddAgent(AgentIndex agent, int workers) {
  if (agent < 0) return;
  if (static_cast<size_t>(agent) >= agents_.size()) agents_.resize(agent + 1);
  Slot& slot = agents_[agent];
  slot.active = true;
  slot.capacity = workers * (1 + prefetch_per_worker_);
  slot.assigned = 0;
}

void Scheduler::RemoveAgent(AgentIndex agent) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return;
  agents_[agent] = Slot{};
}

void Scheduler::Release(AgentIndex agent) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return;
  Slot& slot = agents_[agent];
  if (slot.assigned > 0) --slot.assigned;
}

std::vector<Assignment> Scheduler::Assign(const std::function<bool(TaskId)>& still_pending) {
  std::vector<Assignment> out;
  while (!queue_.empty()) {
    // Least loaded relative to its size; a linear scan is cheap next to the
    // cost of shipping a task and keeps the code obvious.
    AgentIndex best = kNoAgent;
    double best_load = 1.0;
    for (size_t i = 0; i < agents_.size(); ++i) {
      const Slot& slot = agents_[i];
      if (!slot.active || slot.assigned >= slot.capacity) continue;
      double load = static_cast<double>(slot.assigned) / slot.capacity;
      if (best == kNoAgent || load < best_load) {
        best = static_cast<AgentIndex>(i);
        best_load = load;
      }
    }
    if (best == kNoAgent) break;
    TaskId task = queue_.front();
    queue_.pop_front();
    if (!still_pending(task)) continue;
    ++agents_[best].assigned;
    out.push_back({best, task});
  }
  return out;
}

int Scheduler::assigned(AgentIndex agent) const {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return 0;
  return agents_[agent].assigned;
}

int Scheduler::capacity(AgentIndex agent) const {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return 0;
  return agents_[agent].capacity;
}

}  // namespace dragon::daemon
