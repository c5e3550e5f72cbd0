#include "daemon/scheduler.h"

#include <utility>

namespace dragon::daemon {

Scheduler::Scheduler(int prefetch_per_worker)
    : prefetch_per_worker_(prefetch_per_worker < 0 ? 0 : prefetch_per_worker) {}

template <typename Change>
void Scheduler::Update(AgentIndex agent, Change change) {
  Slot& slot = agents_[agent];
  const bool was_open = slot.active && slot.assigned < slot.capacity;
  std::set<Load, LessLoaded>::node_type node;
  if (was_open) node = open_.extract(Load{slot.assigned, slot.capacity, agent});
  change(slot);
  if (!slot.active || slot.assigned >= slot.capacity) return;
  const Load now{slot.assigned, slot.capacity, agent};
  if (node.empty()) {
    open_.insert(now);
  } else {
    // Re-use the node: no allocation per assignment.
    node.value() = now;
    open_.insert(std::move(node));
  }
}

void Scheduler::AddAgent(AgentIndex agent, int workers) {
  if (agent < 0) return;
  if (static_cast<size_t>(agent) >= agents_.size()) agents_.resize(agent + 1);
  Update(agent, [&](Slot& slot) {
    slot.active = true;
    slot.capacity = workers * (1 + prefetch_per_worker_);
    slot.assigned = 0;
  });
}

void Scheduler::RemoveAgent(AgentIndex agent) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return;
  Update(agent, [](Slot& slot) { slot = Slot{}; });
}

void Scheduler::Release(AgentIndex agent) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return;
  Update(agent, [](Slot& slot) {
    if (slot.assigned > 0) --slot.assigned;
  });
}

std::vector<Assignment> Scheduler::Assign(const std::function<bool(TaskId)>& still_pending) {
  std::vector<Assignment> out;
  while (!queue_.empty() && !open_.empty()) {
    TaskId task = queue_.front();
    queue_.pop_front();
    if (!still_pending(task)) continue;
    const AgentIndex best = open_.begin()->agent;
    Update(best, [](Slot& slot) { ++slot.assigned; });
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
