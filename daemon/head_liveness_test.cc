// The Head with membership on a fake clock: heartbeats, loss, infrastructure
// retries, fencing of stale incarnations, the no-node grace, drain.
#include <catch2/catch.hpp>

#include "absl/strings/match.h"
#include "daemon/head.h"
#include "daemon/head_test_fixture.h"

namespace dragon::daemon {
namespace {

using dragon::v1::TaskState;

// Answers every ping in the agent's outbox; returns the task ids also found.
std::vector<TaskId> AnswerPings(Head* head, AgentIndex agent, AgentOutbox* box) {
  auto messages = box->TakeAll();
  if (uint64_t seq = LastPing(messages); seq > 0) {
    dragon::v1::Heartbeat beat;
    beat.set_ping_seq(seq);
    head->Heartbeat(agent, beat);
  }
  return Fixture::TasksIn(messages);
}

TEST_CASE("a registered agent gets no task until its task loop answers a ping", "[liveness]") {
  Fixture f;
  f.Submit(1);
  dragon::v1::Register reg;
  reg.set_protocol_version(kProtocolVersion);
  reg.set_node_id("n1");
  reg.set_workers(1);
  auto registration = f.head.RegisterAgent(reg, AgentLink{f.agent_box, nullptr, "test"});
  REQUIRE(registration.ok());
  CHECK(registration->incarnation == 1);
  auto first = f.agent_box->TakeAll();
  REQUIRE(first.size() == 2);
  REQUIRE(first[0].has_registered());
  CHECK(first[0].registered().incarnation() == 1);
  CHECK(first[0].registered().heartbeat_timeout_ms() == 4000);
  CHECK(first[0].registered().max_payload_bytes() == 100);
  REQUIRE(first[1].has_ping());
  CHECK(f.head.ListNodes().nodes(0).state() == "joining");
  CHECK(f.State(1) == dragon::v1::PENDING);
  dragon::v1::Heartbeat beat;
  beat.set_ping_seq(first[1].ping().seq());
  f.head.Heartbeat(registration->index, beat);
  CHECK(f.head.ListNodes().nodes(0).state() == "ready");
  CHECK(f.SentToAgent() == std::vector<TaskId>{1});
}

TEST_CASE("the head pings each interval; a silent agent is lost at the timeout", "[liveness]") {
  Fixture f;
  f.AddAgent(1);
  f.Submit(3);
  CHECK(f.SentToAgent() == std::vector<TaskId>{1, 2});
  f.Started(1);
  for (int i = 0; i < 3; ++i) {
    f.clock.Advance(absl::Seconds(1));
    f.head.Tick();
    CHECK(LastPing(f.agent_box->TakeAll()) > 0);  // pinged, never answered
  }
  CHECK(f.head.ListNodes().nodes(0).state() == "ready");
  CHECK(f.drops == 0);
  f.clock.Advance(absl::Seconds(1));
  f.head.Tick();
  auto node = f.head.ListNodes().nodes(0);
  CHECK(node.state() == "lost");
  CHECK_THAT(node.lost_reason(), Catch::Contains("no heartbeat for 4.0 s"));
  CHECK(f.drops == 1);                 // its stream was dropped
  CHECK(f.agent_box->closed());
  // The running task goes back to the queue for one infrastructure retry,
  // the unstarted one too; nothing was reported to the client.
  CHECK(f.State(1) == dragon::v1::PENDING);
  CHECK(f.State(2) == dragon::v1::PENDING);
  CHECK(f.head.GetTask(1)->infra_attempts() == 1);
  CHECK(f.head.GetTask(2)->infra_attempts() == 0);
  CHECK(f.Results().empty());
}

TEST_CASE("a heartbeat's load shows in ListNodes while its node is live, not once lost",
          "[liveness][load]") {
  Fixture f;
  f.AddAgent(1);
  CHECK_FALSE(f.head.ListNodes().nodes(0).has_load());  // its first heartbeat had none
  f.clock.Advance(absl::Seconds(1));
  f.head.Tick();
  const uint64_t seq = LastPing(f.agent_box->TakeAll());
  REQUIRE(seq > 0);
  dragon::v1::Heartbeat beat;
  beat.set_ping_seq(seq);
  beat.set_ready_workers(1);
  dragon::v1::NodeLoad* load = beat.mutable_load();
  load->set_cpu_busy_permille(250);
  load->set_cpus(8);
  load->set_mem_total_bytes(16ull << 30);
  load->set_mem_available_bytes(5ull << 30);
  load->set_load1(1.5);
  load->set_sampled_us(1'700'000'001'000'000);
  load->set_workers_rss_bytes(300ull << 20);
  f.head.Heartbeat(f.agent, beat);
  auto node = f.head.ListNodes().nodes(0);
  CHECK(node.state() == "ready");
  REQUIRE(node.has_load());
  CHECK(node.load().cpu_busy_permille() == 250);
  CHECK(node.load().cpus() == 8);
  CHECK(node.load().mem_total_bytes() == 16ull << 30);
  CHECK(node.load().mem_available_bytes() == 5ull << 30);
  CHECK(node.load().load1() == 1.5);
  CHECK(node.load().sampled_us() == 1'700'000'001'000'000);
  CHECK(node.load().workers_rss_bytes() == 300ull << 20);
  // Silent until lost: what it last measured is no longer shown.
  for (int i = 0; i < 5 && node.state() != "lost"; ++i) {
    f.clock.Advance(absl::Seconds(1));
    f.head.Tick();
    node = f.head.ListNodes().nodes(0);
  }
  CHECK(node.state() == "lost");
  CHECK_FALSE(node.has_load());
}

TEST_CASE("an agent that keeps answering is never lost", "[liveness]") {
  Fixture f;
  f.AddAgent(1);
  for (int i = 0; i < 20; ++i) {
    f.clock.Advance(absl::Milliseconds(900));
    f.head.Tick();
    AnswerPings(&f.head, f.agent, f.agent_box.get());
  }
  CHECK(f.head.ListNodes().nodes(0).state() == "ready");
  CHECK(f.drops == 0);
}

TEST_CASE("a task is run again once on a lost node, then fails as NODE_LOST", "[liveness]") {
  Fixture f;
  f.AddAgent(1, "n1");
  f.Submit(1);
  CHECK(f.SentToAgent() == std::vector<TaskId>{1});
  f.Started(1);
  f.head.AgentLost(f.agent, "stream broke");
  CHECK(f.State(1) == dragon::v1::PENDING);

  auto box2 = std::make_shared<AgentOutbox>();
  AgentIndex second = RegisterReady(&f.head, box2, "n1", 1);
  CHECK(Fixture::TasksIn(box2->TakeAll()) == std::vector<TaskId>{1});
  f.Started(1, second);
  f.head.AgentLost(second, "stream broke again");
  CHECK(f.State(1) == dragon::v1::FAILED);
  auto results = f.Results();
  REQUIRE(results.size() == 1);
  CHECK(results[0].result().failure() == dragon::v1::FAILURE_NODE_LOST);
  CHECK_THAT(results[0].result().error(), Catch::Contains("node n1 (incarnation 2)"));
  CHECK_THAT(results[0].result().error(), Catch::Contains("ran 2 time(s)"));
  CHECK_THAT(results[0].result().error(), Catch::Contains("infra_retries"));
  CHECK(f.head.GetTask(1)->failure() == dragon::v1::FAILURE_NODE_LOST);
}

TEST_CASE("a session's infra_retries overrides the head's", "[liveness]") {
  Fixture f;  // head default 1
  dragon::v1::Hello hello;
  hello.set_protocol_version(kProtocolVersion);
  hello.set_infra_retries(0);
  auto box = std::make_shared<SessionOutbox>();
  auto welcome = f.head.OpenSession(hello, box, "test");
  REQUIRE(welcome.ok());
  CHECK(welcome->infra_retries() == 0);
  f.AddAgent(1);
  dragon::v1::SubmitBatch batch;
  auto* t = batch.add_tasks();
  t->set_client_ref(1);
  t->set_kind(dragon::v1::PYTHON);
  t->set_payload("p");
  f.head.Submit(welcome->session_id(), &batch);
  f.Started(1);
  f.head.AgentLost(f.agent, "gone");
  CHECK(f.State(1) == dragon::v1::FAILED);
  hello.set_infra_retries(kMaxInfraRetries + 1);
  CHECK(absl::IsInvalidArgument(f.head.OpenSession(hello, box, "test").status()));
}

TEST_CASE("a restarted agent fences the hung incarnation; its late results are ignored",
          "[liveness]") {
  Fixture f;
  f.AddAgent(1, "n1");
  const AgentIndex stale = f.agent;
  f.Submit(1);
  CHECK(f.SentToAgent() == std::vector<TaskId>{1});
  f.Started(1);
  // A new agent process for the node registers before the old one is
  // noticed (it is hung): the old incarnation is fenced at once.
  auto box2 = std::make_shared<AgentOutbox>();
  AgentIndex fresh = RegisterReady(&f.head, box2, "n1", 1);
  CHECK(f.drops == 1);
  CHECK(f.head.ListNodes().nodes_size() == 1);
  CHECK(f.head.ListNodes().nodes(0).incarnation() == 2);
  CHECK(Fixture::TasksIn(box2->TakeAll()) == std::vector<TaskId>{1});
  // The stale agent wakes up and reports the task it had been running.
  f.Report(1, dragon::v1::OK, "stale", stale);
  CHECK(f.State(1) == dragon::v1::SCHEDULED);
  CHECK(f.Results().empty());
  // The fresh one's result is the one delivered, once.
  f.Report(1, dragon::v1::OK, "fresh", fresh);
  auto results = f.Results();
  REQUIRE(results.size() == 1);
  CHECK(results[0].result().data() == "fresh");
}

TEST_CASE("a stale agent that re-registers after its replacement is refused", "[liveness]") {
  Fixture f;
  f.AddAgent(1, "n1");
  f.clock.Advance(absl::Seconds(5));
  f.head.Tick();
  auto box2 = std::make_shared<AgentOutbox>();
  RegisterReady(&f.head, box2, "n1", 1);  // incarnation 2
  dragon::v1::Register reg;
  reg.set_protocol_version(kProtocolVersion);
  reg.set_node_id("n1");
  reg.set_workers(1);
  reg.set_previous_incarnation(1);
  auto refused = f.head.RegisterAgent(reg, AgentLink{std::make_shared<AgentOutbox>(), nullptr, "x"});
  CHECK(absl::IsAlreadyExists(refused.status()));
}

TEST_CASE("with no node left, queued tasks fail after the grace period, naming why",
          "[liveness]") {
  Fixture f;
  f.AddAgent(1, "n1");
  f.Submit(3);
  f.head.NoteLaunchProblem("the local agent could not be restarted");
  f.head.AgentLost(f.agent, "killed");
  CHECK(f.State(3) == dragon::v1::PENDING);
  f.clock.Advance(absl::Seconds(29));
  f.head.Tick();
  CHECK(f.Results().empty());
  f.clock.Advance(absl::Seconds(1));
  f.head.Tick();
  auto results = f.Results();
  REQUIRE(results.size() == 3);
  for (const auto& r : results) {
    CHECK(r.result().failure() == dragon::v1::FAILURE_NO_NODES);
    CHECK_THAT(r.result().error(), Catch::Contains("none came back within 30 s"));
    CHECK_THAT(r.result().error(), Catch::Contains("node n1"));
    CHECK_THAT(r.result().error(), Catch::Contains("could not be restarted"));
  }
  // Work submitted while there is still no node fails at once.
  f.Submit(1);
  auto late = f.Results();
  REQUIRE(late.size() == 1);
  CHECK(late[0].result().failure() == dragon::v1::FAILURE_NO_NODES);
  // A node comes back: new work waits for it again.
  f.agent_box = std::make_shared<AgentOutbox>();
  f.AddAgent(1, "n1");
  f.Submit(1);
  CHECK(f.Results().empty());
  CHECK(f.SentToAgent().size() == 1);
}

TEST_CASE("agents that never register do not make work wait forever", "[liveness]") {
  Fixture f;
  f.head.ExpectNodes();
  f.Submit(2);
  f.clock.Advance(absl::Seconds(31));
  f.head.Tick();
  CHECK(f.Results().size() == 2);
}

TEST_CASE("drain asks back unstarted tasks; they run elsewhere; undrain resumes", "[liveness]") {
  Fixture f;
  f.AddAgent(1, "a");
  const AgentIndex a = f.agent;
  f.Submit(2);
  CHECK(f.SentToAgent() == std::vector<TaskId>{1, 2});
  f.Started(1);
  auto info = f.head.DrainNode("a", true);
  REQUIRE(info.ok());
  CHECK(info->state() == "draining");
  auto reclaim = f.agent_box->TakeAll();
  REQUIRE(reclaim.size() == 1);
  REQUIRE(reclaim[0].has_reclaim());
  CHECK(reclaim[0].reclaim().task_ids_size() == 1);
  CHECK(reclaim[0].reclaim().task_ids(0) == 2);
  // The agent gives it back.
  dragon::v1::AgentUpdate released;
  released.add_released(2);
  f.head.ApplyUpdate(a, &released);
  CHECK(f.State(2) == dragon::v1::PENDING);
  CHECK(f.SentToAgent().empty());  // draining: nothing new
  // Another node takes it.
  auto box_b = std::make_shared<AgentOutbox>();
  AgentIndex b = RegisterReady(&f.head, box_b, "b", 1);
  CHECK(Fixture::TasksIn(box_b->TakeAll()) == std::vector<TaskId>{2});
  // The running task finishes normally on the draining node.
  f.Report(1, dragon::v1::OK, "done", a);
  CHECK(f.State(1) == dragon::v1::DONE);
  f.Report(2, dragon::v1::OK, "done", b);
  f.Submit(1);
  CHECK(Fixture::TasksIn(box_b->TakeAll()) == std::vector<TaskId>{3});
  REQUIRE(f.head.DrainNode("a", false).ok());
  f.Submit(2);
  CHECK_FALSE(f.SentToAgent().empty());  // a is placed again
  CHECK(absl::IsNotFound(f.head.DrainNode("nope", true).status()));
}

TEST_CASE("a removed node finishes its running task, gives back the rest, then leaves as gone",
          "[liveness]") {
  Fixture f;
  f.AddAgent(1, "a");
  f.Submit(2);
  CHECK(f.SentToAgent() == std::vector<TaskId>{1, 2});
  f.Started(1);
  auto info = f.head.RemoveNode("a");
  REQUIRE(info.ok());
  CHECK(info->state() == "draining");
  CHECK(info->removing());
  auto asked = f.agent_box->TakeAll();
  REQUIRE(asked.size() == 1);
  CHECK(asked[0].reclaim().task_ids_size() == 1);
  dragon::v1::AgentUpdate released;
  released.add_released(2);
  f.head.ApplyUpdate(f.agent, &released);
  CHECK(f.agent_box->TakeAll().empty());  // task 1 still runs: not told to leave yet
  f.Report(1, dragon::v1::OK, "r");
  auto bye = f.agent_box->TakeAll();
  REQUIRE_FALSE(bye.empty());
  CHECK(bye.back().has_shutdown());
  f.head.AgentLost(f.agent, "agent closed its stream");
  CHECK(f.head.ListNodes().nodes(0).state() == "gone");
  // Leaving on request starts no grace: task 2 waits for a node, it does not fail.
  f.clock.Advance(absl::Seconds(60));
  f.head.Tick();
  CHECK(f.State(2) == dragon::v1::PENDING);
}

TEST_CASE("agents leaving at shutdown are gone, not lost, and no retry happens", "[liveness]") {
  Fixture f;
  f.AddAgent(1);
  f.Submit(1);
  f.Started(1);
  f.head.BeginShutdown("test");
  f.head.AgentLost(f.agent, "agent closed its stream");
  CHECK(f.head.ListNodes().nodes(0).state() == "gone");
  CHECK(f.head.WaitForAgentsGone(absl::ZeroDuration()));
}

TEST_CASE("status counts nodes by state and reports the liveness settings", "[liveness]") {
  Fixture f;
  f.AddAgent(2, "a");
  auto box_b = std::make_shared<AgentOutbox>();
  AgentIndex b = RegisterReady(&f.head, box_b, "b", 3);
  f.head.AgentLost(b, "test");
  dragon::v1::StatusReply status;
  f.head.FillStatus(&status);
  CHECK(status.nodes() == 1);
  CHECK(status.workers() == 2);
  CHECK(status.nodes_by_state().at("ready") == 1);
  CHECK(status.nodes_by_state().at("lost") == 1);
  CHECK(status.heartbeat_interval_ms() == 1000);
  CHECK(status.heartbeat_timeout_ms() == 4000);
  CHECK(status.infra_retries() == 1);
}

// --- the end of a node's allocation (a Parsl provider's block) ------------------------------

// Registers an agent of block `block` whose allocation ends `ends_in` from now (fake clock)
// and that drains `window` before; answers its first ping. Returns its index.
AgentIndex RegisterBlockAgent(Fixture* f, std::shared_ptr<AgentOutbox> box, const std::string& node,
                              uint32_t workers, const std::string& block, absl::Duration ends_in,
                              absl::Duration window) {
  dragon::v1::Register reg;
  reg.set_protocol_version(kProtocolVersion);
  reg.set_node_id(node);
  reg.set_workers(workers);
  reg.set_pid(2000);
  reg.set_block_id(block);
  reg.set_job_end_us(absl::ToUnixMicros(f->clock.Now() + ends_in));
  reg.set_drain_before_end_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(window)));
  auto registration = f->head.RegisterAgent(reg, AgentLink{box, nullptr, "test"});
  REQUIRE(registration.ok());
  AnswerPings(&f->head, registration->index, box.get());
  return registration->index;
}

const dragon::v1::NodeInfo* FindNode(const dragon::v1::ListNodesReply& nodes, const std::string& id) {
  for (const auto& n : nodes.nodes()) {
    if (n.node_id() == id) return &n;
  }
  return nullptr;
}

TEST_CASE("a node is drained once its allocation ends within its drain window", "[liveness][block]") {
  Fixture f;
  auto box = std::make_shared<AgentOutbox>();
  const AgentIndex a =
      RegisterBlockAgent(&f, box, "n1-b3", 1, "3", absl::Seconds(100), absl::Seconds(30));
  auto nodes = f.head.ListNodes();
  REQUIRE(nodes.nodes_size() == 1);
  CHECK(nodes.nodes(0).state() == "ready");
  CHECK(nodes.nodes(0).block_id() == "3");
  CHECK(nodes.nodes(0).job_end_us() == absl::ToUnixMicros(f.clock.Now() + absl::Seconds(100)));

  f.Submit(2);
  CHECK(Fixture::TasksIn(box->TakeAll()) == std::vector<TaskId>{1, 2});
  f.Started(1, a);
  // Heartbeats keep it alive; before end - window nothing changes.
  for (int i = 0; i < 69; ++i) {
    f.clock.Advance(absl::Seconds(1));
    f.head.Tick();
    CHECK(Fixture::TasksIn(box->TakeAll()).empty());
    dragon::v1::Heartbeat beat;
    beat.set_ping_seq(1000 + i);
    f.head.Heartbeat(a, beat);
  }
  CHECK(f.head.ListNodes().nodes(0).state() == "ready");

  // 70 s in: 30 s before the end. Draining: task 2 (not started) is asked back, task 1 runs on.
  f.clock.Advance(absl::Seconds(1));
  f.head.Tick();
  CHECK(f.head.ListNodes().nodes(0).state() == "draining");
  std::vector<uint64_t> asked;
  std::string reason;
  for (const auto& m : box->TakeAll()) {
    if (!m.has_reclaim()) continue;
    asked.assign(m.reclaim().task_ids().begin(), m.reclaim().task_ids().end());
    reason = m.reclaim().reason();
  }
  CHECK(asked == std::vector<uint64_t>{2});
  CHECK_THAT(reason, Catch::Contains("allocation ends in 30s"));
  dragon::v1::AgentUpdate released;
  released.add_released(2);
  f.head.ApplyUpdate(a, &released);
  CHECK(f.State(2) == dragon::v1::PENDING);

  // No new task starts on it in the drain window; another block's node takes them.
  f.Submit(1);
  f.head.Tick();
  CHECK(Fixture::TasksIn(box->TakeAll()).empty());
  auto box_b = std::make_shared<AgentOutbox>();
  RegisterBlockAgent(&f, box_b, "n2-b4", 2, "4", absl::Hours(1), absl::Seconds(30));
  CHECK(Fixture::TasksIn(box_b->TakeAll()) == std::vector<TaskId>{2, 3});

  // The running task finishes on the draining node; it is drained only once.
  f.Report(1, dragon::v1::OK, "r", a);
  CHECK(f.State(1) == dragon::v1::DONE);
  f.clock.Advance(absl::Seconds(1));
  f.head.Tick();
  for (const auto& m : box->TakeAll()) CHECK_FALSE(m.has_reclaim());
  CHECK(FindNode(f.head.ListNodes(), "n1-b3")->state() == "draining");
}

TEST_CASE("a task still running when the allocation ends is run again elsewhere", "[liveness][block]") {
  Fixture f;
  auto box = std::make_shared<AgentOutbox>();
  const AgentIndex a =
      RegisterBlockAgent(&f, box, "n1-b1", 1, "1", absl::Seconds(20), absl::Seconds(10));
  f.Submit(1);
  CHECK(Fixture::TasksIn(box->TakeAll()) == std::vector<TaskId>{1});
  f.Started(1, a);
  // 20 s, answering every ping: draining from 10 s on.
  for (int i = 0; i < 20; ++i) {
    f.clock.Advance(absl::Seconds(1));
    f.head.Tick();
    AnswerPings(&f.head, a, box.get());
    CHECK(FindNode(f.head.ListNodes(), "n1-b1")->state() == (i < 9 ? "ready" : "draining"));
  }
  // The batch system ends the job: the agent's stream ends with the task still running.
  f.head.AgentLost(a, "stream ended");
  CHECK(FindNode(f.head.ListNodes(), "n1-b1")->state() == "lost");
  CHECK(f.State(1) == dragon::v1::PENDING);
  CHECK(f.head.GetTask(1)->infra_attempts() == 1);  // an infrastructure retry, not the app's
  CHECK(f.Results().empty());
  auto box_b = std::make_shared<AgentOutbox>();
  RegisterBlockAgent(&f, box_b, "n2-b2", 1, "2", absl::Hours(1), absl::Seconds(60));
  CHECK(Fixture::TasksIn(box_b->TakeAll()) == std::vector<TaskId>{1});
}

TEST_CASE("an agent whose allocation already ends within its window never gets a task",
          "[liveness][block]") {
  Fixture f;
  f.Submit(1);
  auto box = std::make_shared<AgentOutbox>();
  RegisterBlockAgent(&f, box, "n1-b9", 4, "9", absl::Seconds(50), absl::Seconds(60));
  CHECK(f.head.ListNodes().nodes(0).state() == "draining");
  CHECK(Fixture::TasksIn(box->TakeAll()).empty());
  f.clock.Advance(absl::Seconds(1));
  f.head.Tick();
  CHECK(Fixture::TasksIn(box->TakeAll()).empty());
  CHECK(f.State(1) == dragon::v1::PENDING);
}

TEST_CASE("an agent without an allocation end is never drained for it", "[liveness][block]") {
  Fixture f;
  f.AddAgent(1, "plain");
  f.clock.Advance(absl::Hours(24 * 365));
  f.head.Tick();
  auto node = f.head.ListNodes().nodes(0);
  CHECK(node.state() == "lost");  // silent for a year, but not drained for an end
  CHECK(node.job_end_us() == 0);
  CHECK(node.block_id().empty());
}

}  // namespace
}  // namespace dragon::daemon
