#include "daemon/scheduler.h"

#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <set>

namespace dragon::daemon {
namespace {

auto kAll = [](TaskId) { return true; };

TEST_CASE("nothing is assigned without agents", "[scheduler]") {
  Scheduler s(1);
  s.Enqueue(1);
  CHECK(s.Assign(kAll).empty());
  CHECK(s.queued() == 1);
}

TEST_CASE("an agent gets workers * (1 + prefetch) tasks at most", "[scheduler]") {
  Scheduler s(1);
  s.AddAgent(0, 2);
  for (TaskId t = 1; t <= 10; ++t) s.Enqueue(t);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 4);
  CHECK(a[0].task == 1);
  CHECK(a[3].task == 4);
  CHECK(s.queued() == 6);
  s.Release(0);
  auto b = s.Assign(kAll);
  REQUIRE(b.size() == 1);
  CHECK(b[0].task == 5);
}

TEST_CASE("tasks spread over agents by load", "[scheduler]") {
  Scheduler s(0);
  s.AddAgent(0, 2);
  s.AddAgent(1, 2);
  for (TaskId t = 1; t <= 4; ++t) s.Enqueue(t);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 4);
  int on0 = 0;
  for (auto& x : a) on0 += x.agent == 0;
  CHECK(on0 == 2);
}

TEST_CASE("tasks cancelled while queued are dropped", "[scheduler]") {
  Scheduler s(0);
  s.AddAgent(0, 1);
  s.Enqueue(1);
  s.Enqueue(2);
  auto a = s.Assign([](TaskId t) { return t != 1; });
  REQUIRE(a.size() == 1);
  CHECK(a[0].task == 2);
  CHECK(s.queued() == 0);
}

TEST_CASE("re-queued tasks go first; removed agents get nothing", "[scheduler]") {
  Scheduler s(0);
  s.AddAgent(0, 1);
  s.AddAgent(1, 1);
  s.Enqueue(5);
  s.Requeue(3);
  s.RemoveAgent(0);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 1);
  CHECK(a[0].task == 3);
  CHECK(a[0].agent == 1);
  CHECK(s.capacity(0) == 0);
}

TEST_CASE("256 agents: even spread, capacity never exceeded", "[scheduler][scale]") {
  Scheduler s(1);
  constexpr int kAgents = 256;
  for (AgentIndex a = 0; a < kAgents; ++a) s.AddAgent(a, 8);  // capacity 16 each
  for (TaskId t = 1; t <= 100000; ++t) s.Enqueue(t);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == kAgents * 16);
  std::map<AgentIndex, int> per;
  for (auto& x : a) ++per[x.agent];
  CHECK(per.size() == kAgents);
  for (auto& [agent, n] : per) CHECK(n == 16);
  // Round-robin order: the first 256 assignments go to 256 different agents.
  std::set<AgentIndex> first;
  for (int i = 0; i < kAgents; ++i) first.insert(a[i].agent);
  CHECK(first.size() == kAgents);
  CHECK(s.agents_with_room() == 0);
  CHECK(s.Assign(kAll).empty());
  // Freed room goes where it was freed, at most that much.
  s.Release(17);
  s.Release(17);
  s.Release(200);
  auto b = s.Assign(kAll);
  REQUIRE(b.size() == 3);
  std::multiset<AgentIndex> got;
  for (auto& x : b) got.insert(x.agent);
  CHECK(got == std::multiset<AgentIndex>{17, 17, 200});
  for (AgentIndex i = 0; i < kAgents; ++i) CHECK(s.assigned(i) == 16);
}

TEST_CASE("least loaded relative to size, with agents of different sizes", "[scheduler][scale]") {
  Scheduler s(0);
  s.AddAgent(0, 1);
  s.AddAgent(1, 4);
  s.AddAgent(2, 2);
  for (TaskId t = 1; t <= 7; ++t) s.Enqueue(t);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 7);
  CHECK(s.assigned(0) == 1);
  CHECK(s.assigned(1) == 4);
  CHECK(s.assigned(2) == 2);
  // The first three land on three different (all empty) agents, lowest index first.
  CHECK(a[0].agent == 0);
  CHECK(a[1].agent == 1);
  CHECK(a[2].agent == 2);
}

TEST_CASE("removing agents out of many: they get nothing more, others fill", "[scheduler][scale]") {
  Scheduler s(0);
  for (AgentIndex a = 0; a < 100; ++a) s.AddAgent(a, 2);
  for (AgentIndex a = 0; a < 100; a += 2) s.RemoveAgent(a);  // the even ones
  for (TaskId t = 1; t <= 1000; ++t) s.Enqueue(t);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 100);  // 50 agents x 2
  for (auto& x : a) CHECK(x.agent % 2 == 1);
  s.Release(0);  // releasing a removed agent changes nothing
  CHECK(s.Assign(kAll).empty());
  s.AddAgent(0, 3);  // re-registered under the same index: fresh capacity
  auto b = s.Assign(kAll);
  REQUIRE(b.size() == 3);
  for (auto& x : b) CHECK(x.agent == 0);
}

// The rule the scheduler promises, as the obvious O(agents) scan it replaced.
class ReferenceScheduler {
 public:
  explicit ReferenceScheduler(int prefetch) : prefetch_(prefetch) {}
  void AddAgent(AgentIndex a, int workers) {
    if (static_cast<size_t>(a) >= slots_.size()) slots_.resize(a + 1);
    slots_[a] = {true, workers * (1 + prefetch_), 0};
  }
  void RemoveAgent(AgentIndex a) { slots_[a] = {}; }
  void Release(AgentIndex a) {
    if (slots_[a].assigned > 0) --slots_[a].assigned;
  }
  void Enqueue(TaskId t) { queue_.push_back(t); }
  void Requeue(TaskId t) { queue_.push_front(t); }
  std::vector<Assignment> Assign(const std::function<bool(TaskId)>& pending) {
    std::vector<Assignment> out;
    while (!queue_.empty()) {
      AgentIndex best = kNoAgent;
      double best_load = 1.0;
      for (size_t i = 0; i < slots_.size(); ++i) {
        const Slot& s = slots_[i];
        if (!s.active || s.assigned >= s.capacity) continue;
        double load = static_cast<double>(s.assigned) / s.capacity;
        if (best == kNoAgent || load < best_load) {
          best = static_cast<AgentIndex>(i);
          best_load = load;
        }
      }
      if (best == kNoAgent) break;
      TaskId t = queue_.front();
      queue_.pop_front();
      if (!pending(t)) continue;
      ++slots_[best].assigned;
      out.push_back({best, t});
    }
    return out;
  }

 private:
  struct Slot {
    bool active = false;
    int capacity = 0;
    int assigned = 0;
  };
  int prefetch_;
  std::vector<Slot> slots_;
  std::deque<TaskId> queue_;
};

TEST_CASE("same decisions as the linear scan under random churn", "[scheduler][scale]") {
  std::mt19937 rng(12345);
  Scheduler fast(1);
  ReferenceScheduler ref(1);
  std::vector<std::vector<TaskId>> held(64);  // per agent, for releases
  std::vector<bool> active(64, false);
  TaskId next = 1;
  auto pending = [](TaskId t) { return t % 17 != 0; };  // some were cancelled meanwhile
  for (int step = 0; step < 20000; ++step) {
    const int op = static_cast<int>(rng() % 100);
    const AgentIndex a = static_cast<AgentIndex>(rng() % 64);
    if (op < 3) {
      const int workers = 1 + static_cast<int>(rng() % 8);
      fast.AddAgent(a, workers);
      ref.AddAgent(a, workers);
      held[a].clear();
      active[a] = true;
    } else if (op < 5) {
      if (static_cast<size_t>(a) < 64 && active[a]) {
        fast.RemoveAgent(a);
        ref.RemoveAgent(a);
        for (TaskId t : held[a]) {
          fast.Requeue(t);
          ref.Requeue(t);
        }
        held[a].clear();
        active[a] = false;
      }
    } else if (op < 50) {
      const int n = 1 + static_cast<int>(rng() % 20);
      for (int i = 0; i < n; ++i, ++next) {
        fast.Enqueue(next);
        ref.Enqueue(next);
      }
    } else if (op < 90) {
      if (!held[a].empty()) {
        const size_t k = rng() % held[a].size();
        held[a].erase(held[a].begin() + static_cast<long>(k));
        fast.Release(a);
        ref.Release(a);
      }
    } else {
      auto x = fast.Assign(pending);
      auto y = ref.Assign(pending);
      REQUIRE(x.size() == y.size());
      for (size_t i = 0; i < x.size(); ++i) {
        REQUIRE(x[i].agent == y[i].agent);
        REQUIRE(x[i].task == y[i].task);
        held[x[i].agent].push_back(x[i].task);
      }
      for (AgentIndex i = 0; i < 64; ++i) {
        REQUIRE(fast.assigned(i) <= fast.capacity(i));
      }
    }
  }
}

TEST_CASE("prefetch adapts to task length between its bounds", "[scheduler]") {
  Scheduler s(1, 16);
  s.AddAgent(0, 2);
  CHECK(s.prefetch(0) == 1);  // nothing known yet: the minimum
  CHECK(s.capacity(0) == 4);
  for (int i = 0; i < 20; ++i) s.ObserveRuntime(0, 100);  // 100 us tasks: 2 ms / 100 us = 20
  CHECK(s.prefetch(0) == 16);
  CHECK(s.capacity(0) == 2 * 17);
  for (int i = 0; i < 40; ++i) s.ObserveRuntime(0, 500);  // 2 ms / 500 us = 4
  CHECK(s.prefetch(0) == 4);
  for (int i = 0; i < 40; ++i) s.ObserveRuntime(0, 1000000);  // long tasks: back to the minimum
  CHECK(s.prefetch(0) == 1);
  CHECK(s.capacity(0) == 4);
}

TEST_CASE("a smaller capacity stops assignments until tasks end", "[scheduler]") {
  Scheduler s(1, 8);
  s.AddAgent(0, 1);
  for (int i = 0; i < 10; ++i) s.ObserveRuntime(0, 1);
  for (TaskId t = 1; t <= 20; ++t) s.Enqueue(t);
  CHECK(s.Assign(kAll).size() == 9);  // 1 worker * (1 + 8)
  for (int i = 0; i < 40; ++i) s.ObserveRuntime(0, 1000000);
  CHECK(s.capacity(0) == 2);
  for (int i = 0; i < 7; ++i) s.Release(0);
  CHECK(s.Assign(kAll).empty());  // 2 assigned, capacity 2
  s.Release(0);
  CHECK(s.Assign(kAll).size() == 1);
}

TEST_CASE("equal bounds turn adaptation off", "[scheduler]") {
  Scheduler s(2, 2);
  s.AddAgent(0, 1);
  for (int i = 0; i < 10; ++i) s.ObserveRuntime(0, 1);
  CHECK(s.prefetch(0) == 2);
  CHECK(s.capacity(0) == 3);
}

TEST_CASE("deep prefetch: tasks go out in batches, not one per agent", "[scheduler][scale]") {
  Scheduler s(1, 16);
  constexpr int kAgents = 256;
  for (AgentIndex a = 0; a < kAgents; ++a) {
    s.AddAgent(a, 8);
    CHECK(s.batch(a) == 1);  // minimum prefetch: spread one at a time as before
    for (int i = 0; i < 10; ++i) s.ObserveRuntime(a, 0);  // tasks shorter than a microsecond
    REQUIRE(s.prefetch(a) == 16);
  }
  CHECK(s.capacity(0) == 8 * 17);
  CHECK(s.batch(0) == 8 * (16 - 1) / 2);  // 60
  // One submitted batch of 1,000 reaches 17 agents (16 x 60 + 40), not 256 x ~4.
  for (TaskId t = 1; t <= 1000; ++t) s.Enqueue(t);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 1000);
  std::map<AgentIndex, int> per;
  for (auto& x : a) ++per[x.agent];
  CHECK(per.size() == 17);
  for (AgentIndex i = 0; i < 16; ++i) CHECK(per[i] == 60);
  CHECK(per[16] == 40);
  // Each agent's tasks are consecutive, so the Head sends one message each.
  for (size_t i = 1; i < a.size(); ++i) {
    if (a[i].agent != a[i - 1].agent) CHECK(per.count(a[i].agent) == 1);
  }
  for (size_t i = 0; i + 1 < a.size(); ++i) CHECK(a[i].agent <= a[i + 1].agent);
}

TEST_CASE("deep prefetch: refilled only with room for a batch, never over capacity",
          "[scheduler]") {
  Scheduler s(1, 16);
  s.AddAgent(0, 8);
  for (int i = 0; i < 10; ++i) s.ObserveRuntime(0, 0);
  REQUIRE(s.batch(0) == 60);
  for (TaskId t = 1; t <= 1000; ++t) s.Enqueue(t);
  // Two batches; the last 16 of room wait until a whole batch fits.
  CHECK(s.Assign(kAll).size() == 120);
  CHECK(s.agents_with_room() == 0);
  // 43 tasks ended: 59 free slots, less than a batch; the agent still holds
  // 77 tasks (~9.6 per worker), so it waits for more room.
  for (int i = 0; i < 43; ++i) s.Release(0);
  CHECK(s.Assign(kAll).empty());
  CHECK(s.agents_with_room() == 0);
  s.Release(0);
  auto b = s.Assign(kAll);
  CHECK(b.size() == 60);
  CHECK(s.assigned(0) == 136);
  // Back to long tasks: the batch falls to 1 and the usual capacity applies.
  for (int i = 0; i < 40; ++i) s.ObserveRuntime(0, 1000000);
  CHECK(s.batch(0) == 1);
  CHECK(s.capacity(0) == 16);
  for (int i = 0; i < 121; ++i) s.Release(0);  // 15 assigned, room for 1
  CHECK(s.Assign(kAll).size() == 1);
}

TEST_CASE("deep prefetch: a burst smaller than a batch still goes out", "[scheduler]") {
  Scheduler s(1, 16);
  s.AddAgent(0, 8);
  s.AddAgent(1, 8);
  for (AgentIndex a = 0; a < 2; ++a) {
    for (int i = 0; i < 10; ++i) s.ObserveRuntime(a, 0);
  }
  for (TaskId t = 1; t <= 7; ++t) s.Enqueue(t);
  s.Enqueue(17);
  auto a = s.Assign([](TaskId t) { return t != 17; });  // the last one was cancelled
  REQUIRE(a.size() == 7);
  for (auto& x : a) CHECK(x.agent == 0);
  CHECK(s.queued() == 0);
  CHECK(s.assigned(0) == 7);
}

// --- locality: a task prefers the agent whose node holds its data ---------

TEST_CASE("locality: the data agent gets the task when it has room", "[scheduler][locality]") {
  Scheduler s(0);
  s.AddAgent(0, 2);
  s.AddAgent(1, 2);
  // Both idle: without a preference the tie goes to agent 0.
  s.Enqueue(1, 0, /*data_agent=*/1);
  s.Enqueue(2, 0, /*data_agent=*/1);
  s.Enqueue(3);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 3);
  CHECK(a[0].agent == 1);
  CHECK(a[1].agent == 1);
  CHECK(a[2].agent == 0);
  CHECK(s.assigned(1) == 2);
  CHECK(s.queued_with_preference() == 0);
}

TEST_CASE("locality: a full data agent leaves the task to another", "[scheduler][locality]") {
  Scheduler s(0);
  s.AddAgent(0, 1);
  s.AddAgent(1, 1);
  s.Enqueue(1, 0, 1);
  s.Enqueue(2, 0, 1);  // agent 1 is full by now: agent 0 must not stay idle
  s.Enqueue(3, 0, 1);  // nobody has room: it waits
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 2);
  CHECK(a[0].agent == 1);
  CHECK(a[0].task == 1);
  CHECK(a[1].agent == 0);
  CHECK(a[1].task == 2);
  CHECK(s.queued() == 1);
  // Agent 0 frees up first: the task still waiting goes there, not to wait
  // for its data agent.
  s.Release(0);
  auto b = s.Assign(kAll);
  REQUIRE(b.size() == 1);
  CHECK(b[0].agent == 0);
  CHECK(b[0].task == 3);
}

TEST_CASE("locality: a removed, paused or unknown data agent is no preference",
          "[scheduler][locality]") {
  Scheduler s(0);
  s.AddAgent(0, 4);
  s.AddAgent(1, 4);
  s.AddAgent(2, 4);
  s.RemoveAgent(1);  // its node was lost
  s.SetPaused(2, true);  // draining
  s.Enqueue(1, 0, 1);
  s.Enqueue(2, 0, 2);
  s.Enqueue(3, 0, 7);  // never registered
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 3);
  for (auto& x : a) CHECK(x.agent == 0);
  CHECK(s.assigned(1) == 0);
  CHECK(s.assigned(2) == 0);
  // Undrained, it is preferred again.
  s.SetPaused(2, false);
  s.Enqueue(4, 0, 2);
  auto b = s.Assign(kAll);
  REQUIRE(b.size() == 1);
  CHECK(b[0].agent == 2);
}

TEST_CASE("locality: a re-queued task keeps its preference; TakeQueued forgets it",
          "[scheduler][locality]") {
  Scheduler s(0);
  s.AddAgent(0, 1);
  s.AddAgent(1, 1);
  s.Requeue(5, 0, 1);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 1);
  CHECK(a[0].agent == 1);
  s.Enqueue(6, 0, 1);
  s.Enqueue(7, 3, 0);  // another priority
  CHECK(s.queued_with_preference() == 2);
  CHECK(s.TakeQueued().size() == 2);
  CHECK(s.queued_with_preference() == 0);
}

TEST_CASE("locality: tasks without a preference still go out in whole batches",
          "[scheduler][locality][scale]") {
  Scheduler s(1, 16);
  constexpr int kAgents = 8;
  for (AgentIndex a = 0; a < kAgents; ++a) {
    s.AddAgent(a, 8);
    for (int i = 0; i < 10; ++i) s.ObserveRuntime(a, 0);
    REQUIRE(s.batch(a) == 60);
  }
  // One task in ten holds its data on agent 5: 60 of them, 540 without.
  for (TaskId t = 1; t <= 600; ++t) s.Enqueue(t, 0, t % 10 == 0 ? 5 : kNoAgent);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 600);
  // The queue's order is kept: assignments come out in task order.
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i].task == i + 1);
  // Every preferring task found room on agent 5 (capacity 136).
  for (auto& x : a) {
    if (x.task % 10 == 0) CHECK(x.agent == 5);
  }
  // The others go in runs of a whole batch (60) to the least loaded agent,
  // as without preferences: the preferring tasks sent to agent 5 meanwhile
  // do not split them (when agent 5 is the one given a batch, its preferring
  // tasks count in it). Only the last run, where the queue ran out, is short.
  std::vector<int> runs;
  AgentIndex run_agent = kNoAgent;
  for (auto& x : a) {
    if (x.task % 10 == 0 && x.agent != run_agent) continue;  // to its data agent
    if (x.agent != run_agent) runs.push_back(0);
    ++runs.back();
    run_agent = x.agent;
  }
  REQUIRE(runs.size() >= 9);
  for (size_t i = 0; i + 1 < runs.size(); ++i) CHECK(runs[i] == 60);
  CHECK(runs.back() <= 60);
  for (AgentIndex i = 0; i < kAgents; ++i) CHECK(s.assigned(i) <= s.capacity(i));
}

TEST_CASE("locality: FIFO holds when no agent has room for a batch", "[scheduler][locality]") {
  Scheduler s(1, 16);
  s.AddAgent(0, 8);
  s.AddAgent(1, 8);
  for (AgentIndex a = 0; a < 2; ++a) {
    for (int i = 0; i < 10; ++i) s.ObserveRuntime(a, 0);
  }
  // Two batches of 60 each: 120 of 136, room for 16, less than a batch.
  for (TaskId t = 1; t <= 250; ++t) s.Enqueue(t);
  REQUIRE(s.Assign(kAll).size() == 240);
  REQUIRE(s.agents_with_room() == 0);
  // The 10 left are plain tasks, which wait for a batch's room; a preferring
  // task behind them waits too: the queue's order is kept.
  s.Enqueue(900, 0, 1);
  CHECK(s.Assign(kAll).empty());
  CHECK(s.queued() == 11);
  // At the head of the queue, preferring tasks go to their data agent's free
  // slots at once; the plain task behind them waits for a batch's room.
  CHECK(s.TakeQueued().size() == 11);
  s.Enqueue(901, 0, 1);
  s.Enqueue(902, 0, 1);
  s.Enqueue(903);
  auto b = s.Assign(kAll);
  REQUIRE(b.size() == 2);
  CHECK(b[0].task == 901);
  CHECK(b[0].agent == 1);
  CHECK(b[1].task == 902);
  CHECK(b[1].agent == 1);
  CHECK(s.queued() == 1);
  CHECK(s.assigned(1) == 122);
}

}  // namespace
}  // namespace dragon::daemon
