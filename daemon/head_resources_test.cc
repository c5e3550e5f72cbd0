// The Head with per-task resources: grants on the wire and in TaskInfo,
// refusals (malformed, unsatisfiable), plain slots shrinking under placed
// tasks, MPI gangs (hold-only members, release together, a lost member).
#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <set>

#include "absl/strings/match.h"
#include "daemon/head.h"
#include "daemon/head_test_fixture.h"

namespace dragon::daemon {
namespace {

using dragon::v1::HeadToAgent;
using dragon::v1::TaskAssignment;

struct Node {
  std::shared_ptr<AgentOutbox> box = std::make_shared<AgentOutbox>();
  AgentIndex index = kNoAgent;
  std::vector<HeadToAgent> Take() { return box->TakeAll(); }
};

struct ResFixture {
  common::FakeClock clock;
  Head head{TestOptions(kDefaultKeepFinished, 1, &clock)};
  std::shared_ptr<SessionOutbox> session_box = std::make_shared<SessionOutbox>();
  SessionId session = 0;
  std::map<std::string, Node> nodes;
  uint64_t next_ref = 1;

  explicit ResFixture(uint32_t infra_retries = 1)
      : head(TestOptions(kDefaultKeepFinished, infra_retries, &clock)) {
    dragon::v1::Hello hello;
    hello.set_protocol_version(kProtocolVersion);
    hello.set_cwd("/work");
    session = head.OpenSession(hello, session_box, "test")->session_id();
  }

  Node& Add(const std::string& name, uint32_t workers, uint32_t cores, uint64_t memory = 1 << 30,
            std::vector<std::string> gpus = {}) {
    Node& n = nodes[name];
    dragon::v1::Register reg;
    reg.set_protocol_version(kProtocolVersion);
    reg.set_node_id(name);
    reg.set_host("host-" + name);
    reg.set_workers(workers);
    reg.set_cores(cores);
    reg.set_memory_bytes(memory);
    for (auto& g : gpus) reg.add_gpus(g);
    reg.set_pid(1000);
    auto r = head.RegisterAgent(reg, AgentLink{n.box, [] {}, "test"});
    REQUIRE(r.ok());
    n.index = r->index;
    dragon::v1::Heartbeat beat;
    beat.set_ping_seq(LastPing(n.box->TakeAll()));
    head.Heartbeat(n.index, beat);
    return n;
  }

  TaskId Submit(const dragon::v1::ResourceRequest* req, int count = 1) {
    dragon::v1::SubmitBatch batch;
    for (int i = 0; i < count; ++i) {
      auto* t = batch.add_tasks();
      t->set_client_ref(next_ref++);
      t->set_kind(dragon::v1::PYTHON);
      t->set_payload("p");
      if (req != nullptr) *t->mutable_resources() = *req;
    }
    const uint64_t before = head.ListTasks({}).total_matching();
    head.Submit(session, &batch);
    return before + 1;
  }

  static std::vector<TaskAssignment> Assignments(const std::vector<HeadToAgent>& msgs) {
    std::vector<TaskAssignment> out;
    for (auto& m : msgs) {
      for (auto& t : m.tasks().tasks()) out.push_back(t);
    }
    return out;
  }
  static std::vector<uint64_t> Cancels(const std::vector<HeadToAgent>& msgs) {
    std::vector<uint64_t> out;
    for (auto& m : msgs) {
      for (auto id : m.cancel().task_ids()) out.push_back(id);
    }
    return out;
  }

  void Report(Node& n, TaskId id, dragon::v1::Outcome outcome, int64_t start = 10,
              int64_t end = 20) {
    dragon::v1::AgentUpdate update;
    auto* r = update.add_results();
    r->set_task_id(id);
    r->set_outcome(outcome);
    r->set_start_us(start);
    r->set_end_us(end);
    head.ApplyUpdate(n.index, &update);
  }
  void Started(Node& n, TaskId id) {
    dragon::v1::AgentUpdate update;
    update.add_started()->set_task_id(id);
    head.ApplyUpdate(n.index, &update);
  }

  std::vector<dragon::v1::ClientResult> Results() {
    std::vector<dragon::v1::ClientResult> out;
    for (auto& m : session_box->TakeAll()) {
      for (auto& r : m.results().results()) out.push_back(r);
    }
    return out;
  }
};

dragon::v1::ResourceRequest Cores(uint32_t c) {
  dragon::v1::ResourceRequest r;
  r.set_cores(c);
  return r;
}

TEST_CASE("a multi-core task gets concrete CPU ids, shown in TaskInfo; plain slots shrink",
          "[head][resources]") {
  ResFixture f;
  Node& n = f.Add("n1", 4, 4);
  auto req = Cores(3);
  req.set_memory_bytes(1 << 20);
  req.set_walltime_s(7);
  const TaskId big = f.Submit(&req);
  auto sent = ResFixture::Assignments(n.Take());
  REQUIRE(sent.size() == 1);
  CHECK(sent[0].task_id() == big);
  CHECK(sent[0].payload() == "p");
  const auto& g = sent[0].grant();
  CHECK(std::vector<uint32_t>(g.cpus().begin(), g.cpus().end()) == std::vector<uint32_t>{0, 1, 2});
  CHECK(g.memory_bytes() == 1 << 20);
  CHECK(g.walltime_s() == 7);
  CHECK_FALSE(g.hold_only());
  CHECK_FALSE(g.has_mpi());
  auto info = f.head.GetTask(big);
  CHECK(info->resources().cores() == 3);
  CHECK(info->grant().cpus_size() == 3);
  // One core left for plain tasks: 1 slot x (1 + prefetch 1).
  f.Submit(nullptr, 5);
  auto plain = ResFixture::Assignments(n.Take());
  CHECK(plain.size() == 2);
  for (auto& t : plain) CHECK_FALSE(t.has_grant());
  // The placed task ends: its cores come back to the plain slots.
  f.Report(n, big, dragon::v1::OK);
  CHECK(ResFixture::Assignments(n.Take()).size() == 3);
  CHECK(f.head.GetTask(big)->grant().cpus_size() == 3);  // kept for the record
}

TEST_CASE("priority and walltime alone keep the plain path; walltime travels in the grant",
          "[head][resources]") {
  ResFixture f;
  Node& n = f.Add("n1", 1, 1);
  f.Submit(nullptr, 2);  // fill the slot and its prefetch
  CHECK(ResFixture::Assignments(n.Take()).size() == 2);
  dragon::v1::ResourceRequest low;
  low.set_priority(-1);
  dragon::v1::ResourceRequest high;
  high.set_priority(5);
  high.set_walltime_s(3);
  const TaskId l = f.Submit(&low);
  const TaskId p = f.Submit(nullptr);
  const TaskId h = f.Submit(&high);
  f.Report(n, 1, dragon::v1::OK);
  f.Report(n, 2, dragon::v1::OK);
  f.Report(n, h, dragon::v1::OK);  // ignored if not held; the order is what matters
  std::vector<TaskId> order;
  for (int i = 0; i < 3; ++i) {
    for (auto& t : ResFixture::Assignments(n.Take())) {
      order.push_back(t.task_id());
      if (t.task_id() == h) {
        CHECK(t.grant().walltime_s() == 3);
        CHECK(t.grant().cpus_size() == 0);
      }
    }
    if (order.size() >= 3) break;
    f.Report(n, order.back(), dragon::v1::OK);
  }
  REQUIRE(order.size() >= 3);
  CHECK(order[0] == h);
  CHECK(order[1] == p);
  CHECK(order[2] == l);
}

TEST_CASE("a request no node can hold fails at once, naming it and the largest node",
          "[head][resources]") {
  ResFixture f;
  f.Add("n1", 2, 2, 1 << 30, {"0"});
  f.Add("n2", 4, 4, 1 << 29);
  f.session_box->TakeAll();
  auto req = Cores(8);
  const TaskId t = f.Submit(&req);
  auto results = f.Results();
  REQUIRE(results.size() == 1);
  CHECK(results[0].result().failure() == dragon::v1::FAILURE_UNSATISFIABLE);
  const std::string& e = results[0].result().error();
  CHECK(absl::StrContains(e, "8 core(s)"));
  CHECK(absl::StrContains(e, "4 core(s) (node n2)"));
  CHECK(absl::StrContains(e, "1.0 GiB of memory (node n1)"));
  CHECK(f.head.GetTask(t)->state() == dragon::v1::FAILED);
  // GPUs, and a gang wider than the head.
  dragon::v1::ResourceRequest gpus;
  gpus.set_gpus(2);
  f.Submit(&gpus);
  dragon::v1::ResourceRequest wide;
  wide.set_nodes(3);
  f.Submit(&wide);
  results = f.Results();
  REQUIRE(results.size() == 2);
  CHECK(results[0].result().failure() == dragon::v1::FAILURE_UNSATISFIABLE);
  CHECK(results[1].result().failure() == dragon::v1::FAILURE_UNSATISFIABLE);
  CHECK(absl::StrContains(results[1].result().error(), "on each of 3 nodes"));
  // One that fits once others end waits instead.
  auto four = Cores(4);
  f.Submit(&four);
  f.Submit(&four);
  CHECK(f.Results().empty());
}

TEST_CASE("a malformed request is refused naming the field", "[head][resources]") {
  ResFixture f;
  f.Add("n1", 2, 2);
  f.session_box->TakeAll();
  dragon::v1::ResourceRequest r;
  r.set_nodes(2);
  r.set_ranks_per_node(2);
  r.set_ranks(5);
  f.Submit(&r);
  auto results = f.Results();
  REQUIRE(results.size() == 1);
  CHECK(results[0].result().failure() == dragon::v1::FAILURE_REFUSED);
  CHECK(absl::StrContains(results[0].result().error(), "ranks (5) must equal nodes (2)"));
}

TEST_CASE("an MPI gang: leader with the payload and placement, hold-only members, released "
          "together",
          "[head][resources][mpi]") {
  ResFixture f;
  Node& a = f.Add("a", 2, 2, 1 << 30, {"g0", "g1"});
  Node& b = f.Add("b", 2, 2, 1 << 30, {"g0", "g1"});
  dragon::v1::ResourceRequest r;
  r.set_nodes(2);
  r.set_ranks_per_node(2);
  r.set_gpus(1);
  r.set_launcher_options("-bind-to core");
  const TaskId t = f.Submit(&r);
  auto sa = ResFixture::Assignments(a.Take());
  auto sb = ResFixture::Assignments(b.Take());
  REQUIRE(sa.size() == 1);
  REQUIRE(sb.size() == 1);
  const TaskAssignment& leader = sa[0].grant().hold_only() ? sb[0] : sa[0];
  const TaskAssignment& member = sa[0].grant().hold_only() ? sa[0] : sb[0];
  Node& ln = sa[0].grant().hold_only() ? b : a;
  Node& mn = sa[0].grant().hold_only() ? a : b;
  CHECK(leader.payload() == "p");
  CHECK(member.payload().empty());
  CHECK(member.grant().hold_only());
  CHECK(leader.grant().cpus_size() == 2);
  CHECK(member.grant().cpus_size() == 2);
  CHECK(leader.grant().gpus_size() == 1);
  CHECK(leader.grant().gpus(0) == "g0");
  const auto& mpi = leader.grant().mpi();
  REQUIRE(mpi.hosts_size() == 2);
  CHECK(mpi.hosts(0) == "host-" + std::string(&ln == &a ? "a" : "b"));
  CHECK(mpi.ranks_per_node() == 2);
  CHECK(mpi.ranks() == 4);
  CHECK(mpi.launcher_options() == "-bind-to core");
  CHECK(f.head.GetTask(t)->node() == (&ln == &a ? "a" : "b"));
  // Both nodes are full: plain tasks wait.
  f.Submit(nullptr, 2);
  CHECK(ResFixture::Assignments(a.Take()).empty());
  CHECK(ResFixture::Assignments(b.Take()).empty());
  // The leader reports: the member is told to let go, and both nodes refill.
  f.Report(ln, t, dragon::v1::OK);
  auto to_member = mn.Take();
  CHECK(ResFixture::Cancels(to_member) == std::vector<uint64_t>{t});
  CHECK(ResFixture::Assignments(ln.Take()).size() + ResFixture::Assignments(to_member).size() == 2);
  auto results = f.Results();
  REQUIRE(results.size() == 1);
  CHECK(results[0].result().outcome() == dragon::v1::OK);
}

TEST_CASE("a lost gang member: the leader is told to cancel, the task runs again elsewhere",
          "[head][resources][mpi]") {
  ResFixture f(/*infra_retries=*/1);
  Node& a = f.Add("a", 1, 1);
  Node& b = f.Add("b", 1, 1);
  dragon::v1::ResourceRequest r;
  r.set_nodes(2);
  const TaskId t = f.Submit(&r);
  auto sa = ResFixture::Assignments(a.Take());
  auto sb = ResFixture::Assignments(b.Take());
  REQUIRE(sa.size() == 1);
  REQUIRE(sb.size() == 1);
  Node& leader = sa[0].grant().hold_only() ? b : a;
  Node& member = sa[0].grant().hold_only() ? a : b;
  f.Started(leader, t);
  f.head.AgentLost(member.index, "stream broke");
  CHECK(ResFixture::Cancels(leader.Take()) == std::vector<uint64_t>{t});
  CHECK(f.head.GetTask(t)->state() == dragon::v1::RUNNING);  // until the leader says
  // A third node joins; the leader reports the cancel: the gang runs again.
  Node& c = f.Add("c", 1, 1);
  f.Report(leader, t, dragon::v1::CANCELED, 10, 30);
  CHECK(f.Results().empty());
  auto info = f.head.GetTask(t);
  CHECK(info->state() == dragon::v1::SCHEDULED);
  CHECK(info->infra_attempts() == 1);
  CHECK(ResFixture::Assignments(leader.Take()).size() + ResFixture::Assignments(c.Take()).size() ==
        2);
  // The second gang loses a member too: retries are spent, it fails as NODE_LOST.
  const bool c_leads = f.head.GetTask(t)->node() == "c";
  Node& leader2 = c_leads ? c : leader;
  Node& member2 = c_leads ? leader : c;
  f.Started(leader2, t);
  f.head.AgentLost(member2.index, "heartbeats stopped");
  f.Report(leader2, t, dragon::v1::APP_EXCEPTION, 40, 50);
  auto results = f.Results();
  REQUIRE(results.size() == 1);
  CHECK(results[0].result().failure() == dragon::v1::FAILURE_NODE_LOST);
  CHECK(absl::StrContains(results[0].result().error(), "of its gang"));
}

TEST_CASE("a lost gang leader releases the members and re-runs the gang", "[head][resources][mpi]") {
  ResFixture f;
  Node& a = f.Add("a", 1, 1);
  Node& b = f.Add("b", 1, 1);
  dragon::v1::ResourceRequest r;
  r.set_nodes(2);
  const TaskId t = f.Submit(&r);
  auto sa = ResFixture::Assignments(a.Take());
  Node& leader = sa[0].grant().hold_only() ? b : a;
  Node& member = sa[0].grant().hold_only() ? a : b;
  member.Take();
  f.Started(leader, t);
  f.head.AgentLost(leader.index, "killed");
  CHECK(ResFixture::Cancels(member.Take()) == std::vector<uint64_t>{t});
  CHECK(f.head.GetTask(t)->state() == dragon::v1::PENDING);  // one node left: waits
  Node& c = f.Add("c", 1, 1);
  (void)c;
  CHECK(f.head.GetTask(t)->state() == dragon::v1::SCHEDULED);
}

TEST_CASE("the task table never shows a CPU or GPU granted twice on a node (random load)",
          "[head][resources]") {
  ResFixture f;
  std::vector<std::string> names = {"a", "b", "c"};
  for (auto& n : names) f.Add(n, 4, 4, 1 << 30, {"0", "1"});
  std::mt19937 rng(3);
  std::set<TaskId> live;
  for (int step = 0; step < 300; ++step) {
    dragon::v1::ResourceRequest r;
    switch (rng() % 4) {
      case 0: r.set_cores(1 + rng() % 3); break;
      case 1: r.set_gpus(1); break;
      case 2: r.set_nodes(2); r.set_ranks_per_node(1 + rng() % 2); break;
      default: break;  // plain
    }
    f.Submit(rng() % 4 == 3 ? nullptr : &r);
    for (auto& [name, n] : f.nodes) n.Take();
    // End a few running ones.
    auto running = f.head.ListTasks([] {
      dragon::v1::ListTasksRequest q;
      q.set_state(dragon::v1::SCHEDULED);
      return q;
    }());
    for (auto& info : running.tasks()) {
      if (rng() % 3 == 0) f.Report(f.nodes[info.node()], info.task_id(), dragon::v1::OK);
    }
    // Check: among unfinished placed tasks, per node, CPU and GPU ids are disjoint.
    auto all = f.head.ListTasks([] {
      dragon::v1::ListTasksRequest q;
      q.set_state(dragon::v1::SCHEDULED);
      return q;
    }());
    std::map<std::string, std::set<uint32_t>> cpus;
    std::map<std::string, std::set<std::string>> gpus;
    for (auto& info : all.tasks()) {
      if (!info.has_grant()) continue;
      for (auto c : info.grant().cpus()) REQUIRE(cpus[info.node()].insert(c).second);
      for (auto& g : info.grant().gpus()) REQUIRE(gpus[info.node()].insert(g).second);
    }
  }
}

}  // namespace
}  // namespace dragon::daemon
