#include "daemon/resources.h"

#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <set>

namespace dragon::daemon {
namespace {

auto kAll = [](TaskId) { return true; };

ResourceNeed Need(uint32_t cores, uint64_t memory = 0, uint32_t gpus = 0, uint32_t nodes = 1) {
  ResourceNeed n;
  n.cores = cores;
  n.memory = memory;
  n.gpus = gpus;
  n.nodes = nodes;
  return n;
}

ClusterFacts F(uint32_t largest, uint32_t nodes = 4) { return ClusterFacts{largest, nodes}; }

dragon::v1::ResourceRequest Req(uint32_t cores, uint32_t nodes = 0, uint32_t ppn = 0,
                                uint32_t ranks = 0) {
  dragon::v1::ResourceRequest r;
  r.set_cores(cores);
  r.set_nodes(nodes);
  r.set_ranks_per_node(ppn);
  r.set_ranks(ranks);
  return r;
}

// Every grant of the pool, checked against a recount from the placements:
// no CPU, GPU or byte granted twice, nothing over an agent's size.
void CheckNoDoubleGrant(const ResourcePool& pool, const std::map<TaskId, Placement>& live,
                        const std::map<AgentIndex, ResourceNeed>& sizes) {
  std::map<AgentIndex, std::set<uint32_t>> cpus, gpus;
  std::map<AgentIndex, uint64_t> memory;
  for (const auto& [task, p] : live) {
    std::set<AgentIndex> agents;
    for (const NodeGrant& g : p.nodes) {
      REQUIRE(agents.insert(g.agent).second);  // a gang never uses one node twice
      for (uint32_t c : g.cpus) {
        REQUIRE(c < sizes.at(g.agent).cores);
        REQUIRE(cpus[g.agent].insert(c).second);
      }
      for (uint32_t d : g.gpus) {
        REQUIRE(d < sizes.at(g.agent).gpus);
        REQUIRE(gpus[g.agent].insert(d).second);
      }
      memory[g.agent] += g.memory;
    }
  }
  for (const auto& [agent, size] : sizes) {
    REQUIRE(memory[agent] <= size.memory);
    CHECK(pool.free_cores(agent) == size.cores - cpus[agent].size());
    CHECK(pool.free_gpus(agent) == size.gpus - gpus[agent].size());
    CHECK(pool.free_memory(agent) == size.memory - memory[agent]);
  }
}

TEST_CASE("requests normalize: defaults, MPI fields completing each other", "[resources]") {
  auto plain = NormalizeRequest(dragon::v1::ResourceRequest(), F(8));
  REQUIRE(plain.ok());
  CHECK_FALSE(plain->placed);
  CHECK(plain->need.cores == 1);

  dragon::v1::ResourceRequest wall;
  wall.set_walltime_s(5);
  wall.set_priority(3);
  auto w = NormalizeRequest(wall, F(8));
  REQUIRE(w.ok());
  CHECK_FALSE(w->placed);  // priority and walltime alone keep the plain path
  CHECK(w->walltime_s == 5);
  CHECK(w->priority == 3);

  auto cores = NormalizeRequest(Req(4), F(8));
  REQUIRE(cores.ok());
  CHECK(cores->placed);
  CHECK_FALSE(cores->mpi);
  CHECK(cores->need.cores == 4);

  auto gang = NormalizeRequest(Req(2, 3, 4), F(8));
  REQUIRE(gang.ok());
  CHECK(gang->mpi);
  CHECK(gang->need.nodes == 3);
  CHECK(gang->need.cores == 8);  // 4 ranks x 2 cores per node
  CHECK(gang->ranks == 12);

  auto by_ranks = NormalizeRequest(Req(0, 2, 0, 5), F(8));
  REQUIRE(by_ranks.ok());
  CHECK(by_ranks->ranks_per_node == 3);
  CHECK(by_ranks->need.cores == 3);

  auto ppn_ranks = NormalizeRequest(Req(0, 0, 2, 6), F(8));
  REQUIRE(ppn_ranks.ok());
  CHECK(ppn_ranks->need.nodes == 3);

  // Ranks alone: as few nodes as the largest node allows.
  auto ranks_only = NormalizeRequest(Req(0, 0, 0, 20), F(8));
  REQUIRE(ranks_only.ok());
  CHECK(ranks_only->need.nodes == 3);
  CHECK(ranks_only->ranks_per_node == 7);
  auto small = NormalizeRequest(Req(0, 0, 0, 2), F(8));
  REQUIRE(small.ok());
  CHECK(small->need.nodes == 1);
  CHECK(small->ranks_per_node == 2);

  auto inconsistent = NormalizeRequest(Req(0, 2, 2, 5), F(8));
  REQUIRE_FALSE(inconsistent.ok());
  CHECK(std::string(inconsistent.status().message()).find("ranks (5) must equal nodes (2)") !=
        std::string::npos);
  auto too_few = NormalizeRequest(Req(0, 4, 0, 2), F(8));
  REQUIRE_FALSE(too_few.ok());
  CHECK(std::string(too_few.status().message()).find("at least nodes") != std::string::npos);
  CHECK_FALSE(NormalizeRequest(Req(kMaxCoresPerTask + 1), F(8)).ok());

  // Hosts give the nodes; oversubscribe caps a node's share at the largest node.
  auto named = Req(0, 0, 2);
  named.add_hosts("h1");
  named.add_hosts("h2");
  named.add_hosts("h1");
  auto h = NormalizeRequest(named, F(8));
  REQUIRE(h.ok());
  CHECK(h->placed);
  CHECK(h->need.nodes == 2);
  CHECK(h->ranks == 4);
  CHECK(h->need.hosts == std::vector<std::string>{"h1", "h2"});
  auto over = Req(0, 0, 0, 8);
  over.set_oversubscribe(true);
  auto o = NormalizeRequest(over, F(2, 1));
  REQUIRE(o.ok());
  CHECK(o->need.nodes == 1);
  CHECK(o->ranks_per_node == 8);
  CHECK(o->need.cores == 2);
  auto too_many = Req(0, 3);
  too_many.add_hosts("h1");
  CHECK_FALSE(NormalizeRequest(too_many, F(8)).ok());
}

TEST_CASE("hosts restrict where a task may go", "[resources]") {
  ResourcePool pool;
  pool.AddAgent(0, 4, 0, 0, false, "vm", "n0");
  pool.AddAgent(1, 4, 0, 0, false, "h2", "n1");
  ResourceNeed need = Need(1);
  need.hosts = {"h2"};
  pool.Enqueue(1, need, 0);
  need.hosts = {"n0"};
  pool.Enqueue(2, need, 0);
  auto a = pool.Assign(kAll);
  REQUIRE(a.size() == 2);
  CHECK(a[0].nodes[0].agent == 1);
  CHECK(a[1].nodes[0].agent == 0);
  need.hosts = {"h9"};
  CHECK(pool.Unsatisfiable(need));
  CHECK(pool.CapacityFor(need).allowed_nodes == 0);
}

TEST_CASE("concrete CPU and GPU ids: lowest free first, never shared, reused after release",
          "[resources]") {
  ResourcePool pool;
  pool.AddAgent(0, 4, 1000, 2);
  pool.Enqueue(1, Need(2, 100, 1), 0);
  pool.Enqueue(2, Need(1, 100, 1), 0);
  pool.Enqueue(3, Need(1, 0, 1), 0);  // no GPU left: waits
  auto a = pool.Assign(kAll);
  REQUIRE(a.size() == 2);
  CHECK(a[0].nodes[0].cpus == std::vector<uint32_t>{0, 1});
  CHECK(a[0].nodes[0].gpus == std::vector<uint32_t>{0});
  CHECK(a[1].nodes[0].cpus == std::vector<uint32_t>{2});
  CHECK(a[1].nodes[0].gpus == std::vector<uint32_t>{1});
  CHECK(pool.free_memory(0) == 800);
  CHECK(pool.held_cores(0) == 3);
  CHECK(pool.queued() == 1);
  pool.Release(1);
  auto b = pool.Assign(kAll);
  REQUIRE(b.size() == 1);
  CHECK(b[0].task == 3);
  CHECK(b[0].nodes[0].cpus == std::vector<uint32_t>{0});
  CHECK(b[0].nodes[0].gpus == std::vector<uint32_t>{0});
  CHECK(pool.free_memory(0) == 900);
}

TEST_CASE("a gang takes distinct nodes, leader first, and is released together",
          "[resources]") {
  ResourcePool pool;
  for (AgentIndex i = 0; i < 3; ++i) pool.AddAgent(i, 4, 1000, 0);
  pool.Enqueue(7, Need(2, 0, 0, 2), 0);
  auto a = pool.Assign(kAll);
  REQUIRE(a.size() == 1);
  REQUIRE(a[0].nodes.size() == 2);
  CHECK(a[0].nodes[0].agent != a[0].nodes[1].agent);
  for (const NodeGrant& g : a[0].nodes) CHECK(pool.free_cores(g.agent) == 2);
  // A three-node gang of 3 cores each cannot fit while it runs ...
  pool.Enqueue(8, Need(3, 0, 0, 3), 0);
  CHECK(pool.Assign(kAll).empty());
  // ... and fits once it is released, on all three.
  auto touched = pool.Release(7);
  CHECK(touched.size() == 2);
  auto b = pool.Assign(kAll);
  REQUIRE(b.size() == 1);
  CHECK(b[0].nodes.size() == 3);
  for (AgentIndex i = 0; i < 3; ++i) CHECK(pool.free_cores(i) == 1);
}

TEST_CASE("the reservation keeps a large request from starving behind a flood of small ones",
          "[resources]") {
  ResourcePool pool;
  pool.AddAgent(0, 4, 0, 0);
  pool.AddAgent(1, 4, 0, 0);
  TaskId next = 1;
  std::map<TaskId, Placement> live;
  auto place = [&] {
    for (Placement& p : pool.Assign(kAll)) live[p.task] = p;
  };
  // Both nodes busy with one-core tasks.
  for (int i = 0; i < 8; ++i) pool.Enqueue(next++, Need(1), 0);
  place();
  REQUIRE(live.size() == 8);
  const TaskId big = next++;
  pool.Enqueue(big, Need(4), 0);
  // The flood keeps coming: four new one-core tasks per one that ends.
  std::mt19937 rng(7);
  std::set<TaskId> before_big;  // what its reserved node ran when it was reserved
  int rounds = 0;
  while (live.count(big) == 0) {
    REQUIRE(++rounds < 200);
    for (int i = 0; i < 4; ++i) pool.Enqueue(next++, Need(1), 0);
    std::vector<TaskId> smalls;
    for (auto& [t, p] : live) smalls.push_back(t);
    const TaskId done = smalls[rng() % smalls.size()];
    pool.Release(done);
    live.erase(done);
    before_big.erase(done);
    const bool was_reserved = pool.reservation().has_value();
    place();
    auto r = pool.reservation();
    if (live.count(big) == 0) {
      REQUIRE(r.has_value());
      CHECK(r->first == big);
      const AgentIndex reserved = r->second[0];
      if (!was_reserved) {
        for (auto& [t, p] : live) {
          if (p.nodes[0].agent == reserved) before_big.insert(t);
        }
      }
      // Nothing new lands on the reserved node, and what it ran is still there.
      for (auto& [t, p] : live) {
        if (p.nodes[0].agent == reserved) CHECK(before_big.count(t) == 1);
      }
      CHECK_FALSE(before_big.empty());
    }
  }
  // It was placed in the round its node's last earlier task ended.
  CHECK(before_big.empty());
  CHECK((!pool.reservation().has_value() || pool.reservation()->first != big));
  // Backfill went on meanwhile on the other node.
  int small_after = 0;
  for (auto& [t, p] : live) small_after += t > big;
  CHECK(small_after > 0);
}

TEST_CASE("backfill: small tasks behind a blocked one use the nodes it does not reserve",
          "[resources]") {
  ResourcePool pool;
  pool.AddAgent(0, 2, 0, 0);
  pool.AddAgent(1, 4, 0, 0);
  pool.Enqueue(1, Need(3), 0);  // fits node 1 only
  pool.Enqueue(2, Need(3), 0);  // blocked: reserves node 1 (the only one whose size holds it)
  pool.Enqueue(3, Need(1), 0);  // backfilled onto node 0
  pool.Enqueue(4, Need(1), 0);
  pool.Enqueue(5, Need(1), 0);  // node 0 full, node 1 reserved: waits
  auto a = pool.Assign(kAll);
  std::set<TaskId> placed;
  for (auto& p : a) placed.insert(p.task);
  CHECK(placed == std::set<TaskId>{1, 3, 4});
  auto r = pool.reservation();
  REQUIRE(r.has_value());
  CHECK(r->first == 2);
  CHECK(r->second == std::vector<AgentIndex>{1});
  CHECK(pool.free_cores(1) == 1);  // one core free there, and task 5 did not take it
  pool.Release(1);
  auto b = pool.Assign(kAll);
  REQUIRE(b.size() == 2);
  CHECK(b[0].task == 2);  // the reserved task, before task 5
  CHECK(b[1].task == 5);  // then what is left of node 1
  CHECK_FALSE(pool.reservation().has_value());
}

TEST_CASE("higher priority first; a taken-back task goes before its equals", "[resources]") {
  ResourcePool pool;
  pool.AddAgent(0, 1, 0, 0);
  pool.Enqueue(1, Need(1), 0);
  pool.Enqueue(2, Need(1), 5);
  pool.Enqueue(3, Need(1), 0, /*front=*/true);
  std::vector<TaskId> order;
  for (int i = 0; i < 3; ++i) {
    auto a = pool.Assign(kAll);
    REQUIRE(a.size() == 1);
    order.push_back(a[0].task);
    pool.Release(a[0].task);
  }
  CHECK(order == std::vector<TaskId>{2, 3, 1});
}

TEST_CASE("unsatisfiable: judged against the present nodes' sizes", "[resources]") {
  ResourcePool pool;
  CHECK_FALSE(pool.Unsatisfiable(Need(100)));  // no node yet: it waits
  pool.AddAgent(0, 2, 1000, 0);
  pool.AddAgent(1, 4, 500, 2, /*paused=*/true);
  CHECK_FALSE(pool.Unsatisfiable(Need(4)));
  CHECK(pool.Unsatisfiable(Need(5)));
  CHECK(pool.Unsatisfiable(Need(4, 600)));
  CHECK_FALSE(pool.Unsatisfiable(Need(2, 0, 0, 2)));
  CHECK(pool.Unsatisfiable(Need(3, 0, 0, 2)));
  CHECK(pool.Unsatisfiable(Need(1, 0, 3)));
  CHECK(pool.Unsatisfiable(Need(1, 0, 0, 3)));
  Capacity c = pool.CapacityFor(Need(5));
  CHECK(c.nodes == 2);
  CHECK(c.fitting_nodes == 0);
  CHECK(c.max_cores == 4);
  CHECK(c.max_cores_agent == 1);
  CHECK(c.max_memory_agent == 0);
  CHECK(c.max_gpus == 2);
  CHECK(pool.Facts().largest_cores == 4);
  CHECK(pool.Facts().nodes == 2);
}

TEST_CASE("paused nodes get nothing; a removed node's grants are forgotten", "[resources]") {
  ResourcePool pool;
  pool.AddAgent(0, 2, 0, 0, /*paused=*/true);
  pool.Enqueue(1, Need(1), 0);
  CHECK(pool.Assign(kAll).empty());
  pool.SetPaused(0, false);
  REQUIRE(pool.Assign(kAll).size() == 1);
  pool.Release(1);
  pool.AddAgent(1, 2, 0, 0);
  pool.Enqueue(2, Need(2, 0, 0, 2), 0);
  auto a = pool.Assign(kAll);
  REQUIRE(a.size() == 1);
  REQUIRE(a[0].nodes.size() == 2);
  pool.RemoveAgent(0);
  // Releasing the gang frees its share on node 1; node 0 is gone.
  pool.Release(2);
  CHECK(pool.free_cores(1) == 2);
  CHECK(pool.free_cores(0) == 0);
  pool.Enqueue(3, Need(1, 0, 0, 2), 0);
  CHECK(pool.Assign(kAll).empty());  // one node left: waits
  CHECK(pool.reservation() == std::nullopt);
}

TEST_CASE("cancelled tasks leave the queue and their reservation", "[resources]") {
  ResourcePool pool;
  pool.AddAgent(0, 2, 0, 0);
  pool.Enqueue(1, Need(2), 0);
  REQUIRE(pool.Assign(kAll).size() == 1);
  pool.Enqueue(2, Need(2), 0);
  pool.Enqueue(3, Need(1), 0);
  CHECK(pool.Assign(kAll).empty());
  REQUIRE(pool.reservation().has_value());
  auto a = pool.Assign([](TaskId t) { return t != 2; });
  CHECK(a.empty());
  CHECK_FALSE((pool.reservation().has_value() && pool.reservation()->first == 2));
  pool.Release(1);
  auto b = pool.Assign([](TaskId t) { return t != 2; });
  REQUIRE(b.size() == 1);
  CHECK(b[0].task == 3);
  CHECK(pool.queued() == 0);
}

TEST_CASE("no double grant under any sequence (random placements, releases, pauses, losses)",
          "[resources][random]") {
  for (uint32_t seed = 1; seed <= 40; ++seed) {
    std::mt19937 rng(seed);
    ResourcePool pool;
    std::map<AgentIndex, ResourceNeed> sizes;
    AgentIndex next_agent = 0;
    auto add_agent = [&] {
      const AgentIndex a = next_agent++;
      ResourceNeed s = Need(1 + rng() % 8, (1 + rng() % 8) * 1000, rng() % 3);
      sizes[a] = s;
      pool.AddAgent(a, s.cores, s.memory, s.gpus);
    };
    for (int i = 0; i < 4; ++i) add_agent();
    std::map<TaskId, Placement> live;
    std::set<TaskId> queued;
    TaskId next_task = 1;
    for (int step = 0; step < 400; ++step) {
      const int what = rng() % 10;
      if (what < 4) {
        const uint32_t nodes = rng() % 6 == 0 ? 2 + rng() % 2 : 1;
        const TaskId t = next_task++;
        pool.Enqueue(t, Need(1 + rng() % 6, (rng() % 3) * 1000, rng() % 2, nodes),
                     static_cast<int32_t>(rng() % 3) - 1, rng() % 5 == 0);
        queued.insert(t);
      } else if (what < 7 && !live.empty()) {
        auto it = live.begin();
        std::advance(it, rng() % live.size());
        pool.Release(it->first);
        live.erase(it);
      } else if (what == 7 && sizes.size() > 1) {
        // An agent is lost: the tasks it held (as leader or member) are released.
        auto it = sizes.begin();
        std::advance(it, rng() % sizes.size());
        const AgentIndex gone = it->first;
        pool.RemoveAgent(gone);
        sizes.erase(it);
        for (auto l = live.begin(); l != live.end();) {
          bool on = false;
          for (const NodeGrant& g : l->second.nodes) on |= g.agent == gone;
          if (on) {
            pool.Release(l->first);
            l = live.erase(l);
          } else {
            ++l;
          }
        }
        add_agent();
      } else if (what == 8 && !sizes.empty()) {
        auto it = sizes.begin();
        std::advance(it, rng() % sizes.size());
        pool.SetPaused(it->first, rng() % 2 == 0);
      }
      for (Placement& p : pool.Assign([&](TaskId t) { return rng() % 50 != 0; })) {
        REQUIRE(queued.erase(p.task) == 1);
        for (const NodeGrant& g : p.nodes) REQUIRE(sizes.count(g.agent) == 1);
        live[p.task] = std::move(p);
      }
      CheckNoDoubleGrant(pool, live, sizes);
    }
  }
}

}  // namespace
}  // namespace dragon::daemon
