#include "daemon/scheduler.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace dragon::daemon {

Scheduler::Scheduler(int min_prefetch, int max_prefetch)
    : min_prefetch_(min_prefetch < 0 ? 0 : min_prefetch),
      max_prefetch_(max_prefetch < min_prefetch_ ? min_prefetch_ : max_prefetch) {}

int Scheduler::PrefetchFor(double mean_runtime_us) const {
  if (mean_runtime_us < 0) return min_prefetch_;
  const double wanted = std::round(kPrefetchWindowUs / std::max(mean_runtime_us, 1.0));
  return static_cast<int>(std::clamp<double>(wanted, min_prefetch_, max_prefetch_));
}

void Scheduler::ObserveRuntime(AgentIndex agent, int64_t runtime_us) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size() || min_prefetch_ == max_prefetch_) {
    return;
  }
  Slot& slot = agents_[agent];
  if (!slot.active) return;
  const double sample = static_cast<double>(std::max<int64_t>(runtime_us, 0));
  // An average over the last ~8 tasks: quick to follow a change of workload.
  slot.mean_runtime_us =
      slot.mean_runtime_us < 0 ? sample : slot.mean_runtime_us + (sample - slot.mean_runtime_us) / 8;
  const int prefetch = PrefetchFor(slot.mean_runtime_us);
  if (prefetch == slot.prefetch) return;
  Update(agent, [&](Slot& s) {
    s.prefetch = prefetch;
    s.capacity = s.workers * (1 + prefetch);
  });
}

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
    slot = Slot{};
    slot.active = true;
    slot.workers = workers;
    slot.prefetch = min_prefetch_;
    slot.capacity = workers * (1 + min_prefetch_);
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

int Scheduler::prefetch(AgentIndex agent) const {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return 0;
  return agents_[agent].prefetch;
}

int Scheduler::capacity(AgentIndex agent) const {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return 0;
  return agents_[agent].capacity;
}

}  // namespace dragon::daemon
