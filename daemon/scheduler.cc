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
  Update(agent, [&](Slot& s) { SetPrefetch(&s, prefetch); });
}

void Scheduler::SetPrefetch(Slot* slot, int prefetch) const {
  const int plain = std::max(0, slot->workers - slot->held);
  slot->prefetch = prefetch;
  slot->capacity = plain * (1 + prefetch);
  slot->batch = std::max(1, plain * (prefetch - min_prefetch_) / 2);
}

template <typename Change>
void Scheduler::Update(AgentIndex agent, Change change) {
  Slot& slot = agents_[agent];
  const bool was_open = HasRoom(slot);
  std::set<Load, LessLoaded>::node_type node;
  if (was_open) node = open_.extract(Load{slot.assigned, slot.capacity, agent});
  change(slot);
  if (!HasRoom(slot)) return;
  const Load now{slot.assigned, slot.capacity, agent};
  if (node.empty()) {
    open_.insert(now);
  } else {
    // Re-use the node: no allocation per assignment.
    node.value() = now;
    open_.insert(std::move(node));
  }
}

void Scheduler::AddAgent(AgentIndex agent, int workers, bool paused) {
  if (agent < 0) return;
  if (static_cast<size_t>(agent) >= agents_.size()) agents_.resize(agent + 1);
  Update(agent, [&](Slot& slot) {
    slot = Slot{};
    slot.active = true;
    slot.paused = paused;
    slot.workers = workers;
    SetPrefetch(&slot, min_prefetch_);
  });
}

void Scheduler::SetAgentResources(AgentIndex agent, uint32_t cores, uint64_t memory,
                                  uint32_t gpus, std::string host, std::string name) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return;
  pool_.AddAgent(agent, cores, memory, gpus, agents_[agent].paused, std::move(host),
                 std::move(name));
  SyncHeld(agent);
}

void Scheduler::RemoveAgent(AgentIndex agent) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return;
  Update(agent, [](Slot& slot) { slot = Slot{}; });
  pool_.RemoveAgent(agent);
}

void Scheduler::SetPaused(AgentIndex agent, bool paused) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return;
  Update(agent, [paused](Slot& slot) { slot.paused = paused; });
  pool_.SetPaused(agent, paused);
}

void Scheduler::SyncHeld(AgentIndex agent) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size() || !agents_[agent].active) return;
  const int held = static_cast<int>(pool_.held_cores(agent));
  if (held == agents_[agent].held) return;
  Update(agent, [&](Slot& slot) {
    slot.held = held;
    SetPrefetch(&slot, slot.prefetch);
  });
}

std::vector<Placement> Scheduler::AssignPlaced(const std::function<bool(TaskId)>& still_pending) {
  if (pool_.queued() == 0) return {};
  std::vector<Placement> out = pool_.Assign(still_pending);
  for (const Placement& p : out) {
    for (const NodeGrant& g : p.nodes) SyncHeld(g.agent);
  }
  return out;
}

void Scheduler::ReleasePlaced(TaskId task) {
  for (AgentIndex a : pool_.Release(task)) SyncHeld(a);
}

std::deque<TaskId>& Scheduler::NextQueue() {
  if (other_queued_ > 0) {
    auto it = other_queues_.begin();  // the highest priority
    if (it->first > 0 || queue_.empty()) return it->second;
  }
  return queue_;
}

void Scheduler::PopFront(std::deque<TaskId>& queue) {
  queue.pop_front();
  if (&queue != &queue_) {
    --other_queued_;
    if (queue.empty()) other_queues_.erase(other_queues_.begin());
  }
}

TaskId Scheduler::PopPlain() {
  std::deque<TaskId>& queue = NextQueue();
  const TaskId t = queue.front();
  PopFront(queue);
  return t;
}

std::vector<TaskId> Scheduler::TakeQueued() {
  std::vector<TaskId> out;
  out.reserve(queued());
  while (plain_queued() > 0) out.push_back(PopPlain());
  for (TaskId t : pool_.TakeQueued()) out.push_back(t);
  data_agent_.clear();
  return out;
}

void Scheduler::Release(AgentIndex agent) {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return;
  Update(agent, [](Slot& slot) {
    if (slot.assigned > 0) --slot.assigned;
  });
}

std::vector<Assignment> Scheduler::Assign(const std::function<bool(TaskId)>& still_pending) {
  std::vector<Assignment> out;
  while (plain_queued() > 0) {
    // With no agent room for a batch, only a task at the head of the queue
    // whose data agent has a free slot can still go out.
    const AgentIndex best = open_.empty() ? kNoAgent : open_.begin()->agent;
    if (best == kNoAgent && data_agent_.empty()) break;
    // One batch in a row to the least loaded agent (room for it is what
    // put the agent in open_); the Head sends the run as one message.
    const int want = best == kNoAgent ? 0 : agents_[best].batch;
    int given = 0;
    while (plain_queued() > 0 && (best == kNoAgent || given < want)) {
      std::deque<TaskId>& queue = NextQueue();
      const TaskId task = queue.front();
      // Tasks without a data agent (the flood) cost no lookup while no
      // queued task has one.
      auto preference = data_agent_.empty() ? data_agent_.end() : data_agent_.find(task);
      const AgentIndex data = preference == data_agent_.end() ? kNoAgent : preference->second;
      AgentIndex to = best;
      if (data != kNoAgent && data != best && HasFreeSlot(data)) {
        to = data;
      } else if (best == kNoAgent) {
        break;  // the head of the queue has nowhere to go yet
      }
      PopFront(queue);
      if (preference != data_agent_.end()) data_agent_.erase(preference);
      if (!still_pending(task)) continue;
      out.push_back({to, task});
      if (to == best) {
        ++given;
      } else {
        Update(to, [](Slot& slot) { ++slot.assigned; });
      }
    }
    if (best == kNoAgent) break;
    if (given == 0) break;  // the queue ran empty (the rest was cancelled or went elsewhere)
    Update(best, [given](Slot& slot) { slot.assigned += given; });
  }
  return out;
}

int Scheduler::batch(AgentIndex agent) const {
  if (agent < 0 || static_cast<size_t>(agent) >= agents_.size()) return 0;
  return agents_[agent].batch;
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
