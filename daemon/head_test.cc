// The Head's scheduling and bookkeeping, driven through its public API with
// in-memory outboxes standing in for the gRPC streams.
#include "daemon/head.h"

#include <catch2/catch.hpp>

#include "daemon/head_test_fixture.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {
namespace {

TEST_CASE("tasks flow from session to agent and results back", "[head]") {
  Fixture f;
  f.Submit(3);
  auto accepted = f.session_box->TakeAll();
  REQUIRE(accepted.size() == 1);
  CHECK(accepted[0].accepted().task_ids_size() == 3);
  CHECK(f.State(1) == dragon::v1::PENDING);

  f.AddAgent(1);  // 1 worker + 1 prefetched
  auto sent = f.SentToAgent();
  CHECK(sent == std::vector<TaskId>{1, 2});
  CHECK(f.State(1) == dragon::v1::SCHEDULED);
  CHECK(f.State(3) == dragon::v1::PENDING);

  f.Report(1, dragon::v1::OK, "result-bytes");
  auto results = f.Results();
  REQUIRE(results.size() == 1);
  CHECK(results[0].client_ref() == 100);
  CHECK(results[0].result().data() == "result-bytes");
  CHECK(results[0].result().node() == "n1");
  CHECK(results[0].result().worker_pid() == 42);
  auto info = f.head.GetTask(1);
  CHECK(info->state() == dragon::v1::DONE);
  CHECK(info->times().running_us() > 0);
  CHECK(info->times().finished_us() >= info->times().running_us());
  CHECK(f.SentToAgent() == std::vector<TaskId>{3});  // freed room is refilled
}

TEST_CASE("tasks shorter than a microsecond deepen the prefetch", "[head]") {
  // start_us == end_us is what an agent's microsecond clock reports for the
  // shortest tasks; it must count as a runtime (of 0), not as a missing one.
  Head head([] {
    HeadOptions o;
    o.run_id = "test";
    o.version = "t";
    o.prefetch_per_worker = 1;
    o.max_prefetch_per_worker = 16;
    return o;
  }());
  auto session_box = std::make_shared<SessionOutbox>();
  auto agent_box = std::make_shared<AgentOutbox>();
  dragon::v1::Hello hello;
  hello.set_protocol_version(kProtocolVersion);
  auto welcome = head.OpenSession(hello, session_box, "test");
  REQUIRE(welcome.ok());
  auto agent = RegisterReady(&head, agent_box, "n1", 1);
  dragon::v1::SubmitBatch batch;
  for (int i = 0; i < 100; ++i) {
    auto* t = batch.add_tasks();
    t->set_client_ref(i);
    t->set_kind(dragon::v1::PYTHON);
    t->set_payload("p");
  }
  head.Submit(welcome->session_id(), &batch);
  auto sent = [&] {
    std::vector<TaskId> ids;
    for (auto& m : agent_box->TakeAll()) {
      for (auto& t : m.tasks().tasks()) ids.push_back(t.task_id());
    }
    return ids;
  };
  auto first = sent();
  REQUIRE(first.size() == 2);  // 1 worker x (1 + prefetch 1)
  {
    // A failure stamped with a single time (it never ran) is no runtime.
    dragon::v1::AgentUpdate failed;
    auto* r = failed.add_results();
    r->set_task_id(first[0]);
    r->set_outcome(dragon::v1::SYSTEM_ERROR);
    r->set_start_us(1000);
    r->set_end_us(1000);
    head.ApplyUpdate(agent, &failed);
    auto refill = sent();
    CHECK(refill.size() == 1);  // its one slot back, prefetch still 1
    first = {first[1], refill[0]};
  }
  dragon::v1::AgentUpdate update;
  for (TaskId id : first) {
    auto* r = update.add_results();
    r->set_task_id(id);
    r->set_outcome(dragon::v1::OK);
    r->set_start_us(1000);
    r->set_end_us(1000);
  }
  head.ApplyUpdate(agent, &update);
  // Prefetch 16 now: room for 17, sent as one batch of at least (16-1)/2.
  auto next = sent();
  CHECK(next.size() >= 7);
  CHECK(next.size() <= 17);
}

TEST_CASE("an app exception is DONE, a system error FAILED", "[head]") {
  Fixture f;
  f.AddAgent(2);
  f.Submit(2);
  f.Report(1, dragon::v1::APP_EXCEPTION, "wrapped");
  f.Report(2, dragon::v1::SYSTEM_ERROR);
  CHECK(f.State(1) == dragon::v1::DONE);
  CHECK(f.State(2) == dragon::v1::FAILED);
}

TEST_CASE("refused submissions come back at once as failures", "[head]") {
  Fixture f;
  f.Submit(1, std::string(101, 'x'));  // over max_payload_bytes
  f.Submit(1, "");
  auto results = f.Results();
  REQUIRE(results.size() == 2);
  CHECK(results[0].result().outcome() == dragon::v1::SYSTEM_ERROR);
  CHECK_THAT(results[0].result().error(),
             Catch::Contains("more than the head's limit of 100 bytes per task"));
  CHECK(results[0].result().failure() == dragon::v1::FAILURE_TOO_LARGE);
  CHECK_THAT(results[1].result().error(), Catch::Contains("empty payload"));
  CHECK(results[1].result().failure() == dragon::v1::FAILURE_REFUSED);
  CHECK(f.State(1) == dragon::v1::FAILED);
}

TEST_CASE("executable tasks: a valid spec is scheduled, a bad one refused", "[head]") {
  Fixture f;
  auto submit_exe = [&](const std::string& payload) {
    dragon::v1::SubmitBatch batch;
    auto* t = batch.add_tasks();
    t->set_client_ref(f.next_ref++);
    t->set_kind(dragon::v1::EXECUTABLE);
    t->set_payload(payload);
    f.head.Submit(f.session, &batch);
  };
  dragon::v1::ExecutableSpec good;
  good.add_argv("/bin/true");
  submit_exe(good.SerializeAsString());
  submit_exe("\xff\xff\xff garbage");
  submit_exe(dragon::v1::ExecutableSpec().SerializeAsString());  // empty argv (and payload)
  dragon::v1::ExecutableSpec bad_env;
  bad_env.add_argv("x");
  (*bad_env.mutable_env())["A=B"] = "c";
  submit_exe(bad_env.SerializeAsString());
  auto results = f.Results();
  REQUIRE(results.size() == 3);
  for (auto& r : results) CHECK(r.result().outcome() == dragon::v1::SYSTEM_ERROR);
  CHECK_THAT(results[0].result().error(), Catch::Contains("task 2 refused"));
  CHECK_THAT(results[0].result().error(), Catch::Contains("could not be parsed as"));
  CHECK_THAT(results[1].result().error(), Catch::Contains("empty argv"));
  CHECK_THAT(results[2].result().error(), Catch::Contains("invalid name 'A=B'"));
  f.AddAgent(1);
  std::vector<dragon::v1::TaskAssignment> sent;
  for (auto& m : f.agent_box->TakeAll()) {
    for (auto& t : m.tasks().tasks()) sent.push_back(t);
  }
  REQUIRE(sent.size() == 1);
  CHECK(sent[0].kind() == dragon::v1::EXECUTABLE);
  CHECK(sent[0].task_id() == 1);
}

TEST_CASE("a client speaking another protocol version is refused", "[head]") {
  Head head(HeadOptions{});
  dragon::v1::Hello hello;
  hello.set_protocol_version(99);
  auto welcome = head.OpenSession(hello, std::make_shared<SessionOutbox>(), "peer");
  CHECK(absl::IsFailedPrecondition(welcome.status()));
  CHECK_THAT(std::string(welcome.status().message()), Catch::Contains("protocol version 99"));
}

TEST_CASE("cancelling a pending task ends it and tells the client", "[head]") {
  Fixture f;
  f.Submit(1);
  auto reply = f.head.Cancel(1, "test", absl::ZeroDuration());
  REQUIRE(reply.ok());
  CHECK(reply->previous_state() == dragon::v1::PENDING);
  CHECK(reply->state() == dragon::v1::CANCELLED);
  auto results = f.Results();
  REQUIRE(results.size() == 1);
  CHECK(results[0].result().outcome() == dragon::v1::CANCELED);
  f.AddAgent(1);
  (void)f.agent_box->TakeAll();
  CHECK(f.SentToAgent().empty());  // never dispatched
  CHECK(absl::IsNotFound(f.head.Cancel(77, "test", absl::ZeroDuration()).status()));
}

TEST_CASE("cancelling a running task asks its agent", "[head]") {
  Fixture f;
  f.AddAgent(1);
  (void)f.agent_box->TakeAll();
  f.Submit(1);
  (void)f.agent_box->TakeAll();
  auto reply = f.head.Cancel(1, "test", absl::ZeroDuration());
  REQUIRE(reply.ok());
  CHECK(reply->state() == dragon::v1::SCHEDULED);  // agent has not confirmed yet
  auto msgs = f.agent_box->TakeAll();
  REQUIRE(msgs.size() == 1);
  CHECK(msgs[0].cancel().task_ids(0) == 1);
  f.Report(1, dragon::v1::CANCELED);
  CHECK(f.State(1) == dragon::v1::CANCELLED);
}

TEST_CASE("a lost agent's unstarted tasks are re-queued, running ones fail", "[head]") {
  Fixture f(kDefaultKeepFinished, /*infra_retries=*/0);
  f.AddAgent(1, "lost-node");
  (void)f.agent_box->TakeAll();
  f.Submit(2);
  dragon::v1::AgentUpdate update;
  update.add_started()->set_task_id(1);
  f.head.ApplyUpdate(f.agent, &update);
  f.Results();
  f.head.AgentLost(f.agent, "connection reset");
  CHECK(f.State(1) == dragon::v1::FAILED);
  CHECK(f.State(2) == dragon::v1::PENDING);
  auto results = f.Results();
  REQUIRE(results.size() == 1);
  CHECK_THAT(results[0].result().error(), Catch::Contains("node lost-node"));
  CHECK_THAT(results[0].result().error(), Catch::Contains("connection reset"));
  // A new agent picks up the re-queued task.
  f.agent_box = std::make_shared<AgentOutbox>();
  f.AddAgent(1, "lost-node");
  CHECK(f.SentToAgent() == std::vector<TaskId>{2});
  // One row per node: its latest incarnation.
  auto nodes = f.head.ListNodes();
  REQUIRE(nodes.nodes_size() == 1);
  CHECK(nodes.nodes(0).state() == "ready");
  CHECK(nodes.nodes(0).incarnation() == 2);
}

TEST_CASE("closing a session cancels its unfinished tasks", "[head]") {
  Fixture f;
  f.Submit(2);
  f.head.CloseSession(f.session, "client exited");
  CHECK(f.State(1) == dragon::v1::CANCELLED);
  CHECK(f.head.GetTask(1)->error().find("client exited") != std::string::npos);
  dragon::v1::StatusReply status;
  f.head.FillStatus(&status);
  CHECK(status.tasks_by_state().at("CANCELLED") == 2);
  CHECK(status.sessions() == 0);
}

// --- clients' data peers (PublishDataPeer) ---------------------------------

dragon::v1::DataPeer ClientPeer() {
  dragon::v1::DataPeer peer;
  peer.set_host("login");
  peer.set_pid(77);
  peer.set_ucx_address("ucx-address");
  peer.set_shm_pool_rkey("rkey");
  peer.set_shm_pool_address(0x1000);
  peer.set_shm_pool_bytes(1 << 20);
  return peer;
}

TEST_CASE("a session's data peer is listed apart from nodes until the session closes",
          "[head][data_peer]") {
  Fixture f;
  f.AddAgent(1);
  auto published = f.head.PublishDataPeer(f.session, ClientPeer());
  REQUIRE(published.ok());
  CHECK(published->peer_id() == absl::StrCat("client-", f.session));
  CHECK(published->session_id() == f.session);

  dragon::v1::ListNodesReply listed = f.head.ListNodes();
  REQUIRE(listed.nodes_size() == 1);  // the agent only: a client is no node
  CHECK(listed.nodes(0).node_id() == "n1");
  REQUIRE(listed.data_peers_size() == 1);
  CHECK(listed.data_peers(0).peer_id() == published->peer_id());
  CHECK(listed.data_peers(0).ucx_address() == "ucx-address");
  CHECK(listed.data_peers(0).shm_pool_bytes() == (1u << 20));

  f.head.CloseSession(f.session, "client exited");
  CHECK(f.head.ListNodes().data_peers_size() == 0);
}

TEST_CASE("a data peer needs an open session and a whole description", "[head][data_peer]") {
  Fixture f;
  auto closed = f.head.PublishDataPeer(f.session + 1, ClientPeer());
  CHECK(absl::IsNotFound(closed.status()));
  CHECK(absl::StrContains(closed.status().message(), absl::StrCat("session ", f.session + 1)));
  dragon::v1::DataPeer empty = ClientPeer();
  empty.clear_ucx_address();
  CHECK(absl::IsInvalidArgument(f.head.PublishDataPeer(f.session, empty).status()));
  CHECK(f.head.ListNodes().data_peers_size() == 0);
}

TEST_CASE("Status counts the task bytes the head carried", "[head][data_peer]") {
  Fixture f;
  f.AddAgent(1);
  f.Submit(1, std::string(40, 'a'));
  f.Report(1, dragon::v1::OK, std::string(30, 'r'));
  dragon::v1::StatusReply status;
  f.head.FillStatus(&status);
  CHECK(status.relayed_task_bytes() == 70);
}

// --- retention (--keep-finished) -------------------------------------------

constexpr int kChunk = static_cast<int>(kTaskChunkSize);

// These tests refuse thousands of tasks; each refusal logs a warning.
struct QuietLog {
  QuietLog() { spdlog::set_level(spdlog::level::err); }
  ~QuietLog() { spdlog::set_level(spdlog::level::info); }
};

uint64_t StateCount(const google::protobuf::Map<std::string, uint64_t>& counts,
                    const std::string& state) {
  auto it = counts.find(state);
  return it == counts.end() ? 0 : it->second;
}

TEST_CASE("forgotten tasks: GetTask, ListTasks and Status", "[head][retention]") {
  QuietLog quiet;
  Fixture f(/*keep_finished=*/0);
  // Empty payloads are refused: they end (FAILED) at once, no agent needed.
  f.Submit(2 * kChunk + 10, "");
  f.Results();

  auto forgotten = f.head.GetTask(1);
  CHECK(absl::IsNotFound(forgotten.status()));
  CHECK(forgotten.status().message() ==
        "task 1 finished and was forgotten: this head keeps only the newest 0 finished tasks "
        "(dragond --keep-finished, rounded up to whole 4096-task chunks)");
  auto never = f.head.GetTask(2 * kChunk + 11);
  CHECK(absl::IsNotFound(never.status()));
  CHECK(never.status().message() == absl::StrCat("no task ", 2 * kChunk + 11, " in this run"));
  REQUIRE(f.head.GetTask(2 * kChunk + 1).ok());

  dragon::v1::ListTasksRequest all;
  all.set_limit(100000);
  auto listed = f.head.ListTasks(all);
  CHECK(listed.total_matching() == 10);
  REQUIRE(listed.tasks_size() == 10);
  CHECK(listed.tasks(0).task_id() == 2 * kChunk + 10);
  CHECK(listed.tasks(9).task_id() == 2 * kChunk + 1);

  dragon::v1::StatusReply status;
  f.head.FillStatus(&status);
  CHECK(StateCount(status.tasks_by_state(), "FAILED") == 10);
  CHECK(StateCount(status.forgotten_by_state(), "FAILED") == 2 * kChunk);
  CHECK(status.forgotten_by_state().count("DONE") == 0);
  CHECK(status.keep_finished() == 0);
  CHECK(status.highest_task_id() == 2 * kChunk + 10);

  auto cancel = f.head.Cancel(1, "test", absl::ZeroDuration());
  CHECK(absl::IsNotFound(cancel.status()));
  CHECK(absl::StrContains(cancel.status().message(), "forgotten"));
}

TEST_CASE("the default retention keeps a million finished tasks", "[head][retention]") {
  QuietLog quiet;
  Fixture f;
  f.Submit(2 * kChunk, "");
  CHECK(f.head.GetTask(1).ok());
  dragon::v1::StatusReply status;
  f.head.FillStatus(&status);
  CHECK(status.keep_finished() == 1000000);
  CHECK(status.forgotten_by_state().empty());
}

TEST_CASE("live tasks pin their chunk through agent loss and session close",
          "[head][retention]") {
  QuietLog quiet;
  Fixture f(/*keep_finished=*/0);
  f.AddAgent(1);
  f.Submit(1);               // chunk 0: to the agent
  f.Submit(kChunk - 1, "");  // the rest of chunk 0 ends at once
  f.Submit(kChunk, "");      // chunk 1: all ended
  f.Submit(1);               // chunk 2: prefetched by the agent
  CHECK(f.SentToAgent() == std::vector<TaskId>{1, 2 * kChunk + 1});
  CHECK(absl::IsNotFound(f.head.GetTask(kChunk + 1).status()));
  CHECK(f.State(1) == dragon::v1::SCHEDULED);
  CHECK(f.State(2) == dragon::v1::FAILED);  // kept: chunk 0 is pinned

  // The node is lost: both go back to the queue, task 1 in its pinned chunk.
  f.head.AgentLost(f.agent, "test");
  CHECK(f.State(1) == dragon::v1::PENDING);
  CHECK(f.State(2 * kChunk + 1) == dragon::v1::PENDING);

  // The session closes: its live tasks on both sides of the forgotten chunk
  // are cancelled; then nothing pins chunk 0 any more.
  f.head.CloseSession(f.session, "test");
  CHECK(absl::IsNotFound(f.head.GetTask(1).status()));
  CHECK(f.State(2 * kChunk + 1) == dragon::v1::CANCELLED);  // the last chunk is kept
  dragon::v1::StatusReply status;
  f.head.FillStatus(&status);
  CHECK(StateCount(status.forgotten_by_state(), "CANCELLED") == 1);
  CHECK(StateCount(status.forgotten_by_state(), "FAILED") == 2 * kChunk - 1);
  CHECK(StateCount(status.tasks_by_state(), "CANCELLED") == 1);
}

TEST_CASE("a task finished by its agent can be forgotten", "[head][retention]") {
  QuietLog quiet;
  Fixture f(/*keep_finished=*/0);
  f.AddAgent(1);
  f.Submit(1);
  f.Submit(kChunk - 1, "");
  CHECK(f.SentToAgent() == std::vector<TaskId>{1});
  CHECK(f.head.GetTask(2).ok());
  f.Report(1, dragon::v1::OK, "r");
  auto results = f.Results();
  REQUIRE(results.size() == static_cast<size_t>(kChunk));  // the refusals and task 1
  CHECK(absl::IsNotFound(f.head.GetTask(1).status()));
  // A late duplicate result for a forgotten task is ignored, not a crash.
  f.Report(1, dragon::v1::OK, "again");
  CHECK(f.Results().empty());
  auto nodes = f.head.ListNodes();
  REQUIRE(nodes.nodes_size() == 1);
  CHECK(nodes.nodes(0).tasks_done() == 1);
}

}  // namespace
}  // namespace dragon::daemon
