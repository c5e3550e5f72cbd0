// Locality through the Head: a task submitted with TaskSubmission.data_node
// goes to the agent serving that node while it has room, and to any other
// otherwise (full, draining, lost, unknown: no preference).
#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "daemon/head.h"
#include "daemon/head_test_fixture.h"

namespace dragon::daemon {
namespace {

// Two ready agents of one worker each (with prefetch 1: two tasks each),
// "n1" registered first so that it wins ties of load.
struct TwoNodes : Fixture {
  std::shared_ptr<AgentOutbox> box2 = std::make_shared<AgentOutbox>();
  AgentIndex n1 = kNoAgent;
  AgentIndex n2 = kNoAgent;

  TwoNodes() {
    AddAgent(1, "n1");
    n1 = agent;
    n2 = RegisterReady(&head, box2, "n2", 1);
  }

  // Submits `count` tasks preferring `data_node` ("" for none), in one batch.
  void SubmitWithData(int count, const std::string& data_node,
                      const dragon::v1::ResourceRequest* resources = nullptr) {
    dragon::v1::SubmitBatch batch;
    for (int i = 0; i < count; ++i) {
      auto* t = batch.add_tasks();
      t->set_client_ref(next_ref++);
      t->set_kind(dragon::v1::PYTHON);
      t->set_payload("p");
      t->set_data_node(data_node);
      if (resources != nullptr) *t->mutable_resources() = *resources;
    }
    head.Submit(session, &batch);
  }

  std::vector<TaskId> SentToN1() { return TasksIn(agent_box->TakeAll()); }
  std::vector<TaskId> SentToN2() { return TasksIn(box2->TakeAll()); }
  std::string NodeOf(TaskId id) { return head.GetTask(id)->node(); }
};

TEST_CASE("locality: tasks go to their data node while it has room", "[head][locality]") {
  TwoNodes f;
  // Without a preference, the first task would go to n1 (the tie's winner).
  f.SubmitWithData(3, "n2");
  CHECK(f.SentToN2() == std::vector<TaskId>{1, 2});
  // n2 is full (1 worker + 1 prefetched): the third must not wait for it.
  CHECK(f.SentToN1() == std::vector<TaskId>{3});
  CHECK(f.NodeOf(1) == "n2");
  CHECK(f.NodeOf(3) == "n1");

  // n2 finishes one: the next task preferring it goes there although n1 is
  // less loaded now.
  f.Report(1, dragon::v1::OK, "", f.n2);
  f.SubmitWithData(1, "n2");
  CHECK(f.SentToN2() == std::vector<TaskId>{4});
  CHECK(f.SentToN1().empty());
}

TEST_CASE("locality: tasks without a data node spread as before", "[head][locality]") {
  TwoNodes f;
  f.SubmitWithData(2, "");
  f.SubmitWithData(1, "n1");
  // Least loaded first: 1 to n1, 2 to n2; 3 prefers n1, which has room.
  CHECK(f.SentToN1() == std::vector<TaskId>{1, 3});
  CHECK(f.SentToN2() == std::vector<TaskId>{2});
}

TEST_CASE("locality: an unknown, draining or lost data node is no preference",
          "[head][locality]") {
  TwoNodes f;
  SECTION("unknown") {
    f.SubmitWithData(1, "n9");
    CHECK(f.SentToN1() == std::vector<TaskId>{1});
  }
  SECTION("draining") {
    REQUIRE(f.head.DrainNode("n2", true).ok());
    f.SubmitWithData(2, "n2");
    CHECK(f.SentToN1() == std::vector<TaskId>{1, 2});
    CHECK(f.SentToN2().empty());
  }
  SECTION("lost before the submission") {
    f.head.AgentLost(f.n2, "killed");
    f.SubmitWithData(2, "n2");
    CHECK(f.SentToN1() == std::vector<TaskId>{1, 2});
  }
  SECTION("lost while its tasks wait in the queue or on it") {
    f.SubmitWithData(4, "n2");
    CHECK(f.SentToN2() == std::vector<TaskId>{1, 2});
    CHECK(f.SentToN1() == std::vector<TaskId>{3, 4});
    f.SubmitWithData(1, "n2");  // 5 waits: both nodes are full
    f.head.AgentLost(f.n2, "killed");
    // 1 and 2 (never started) are back in the queue, first; n1 takes them
    // as it frees up, and never waits for n2.
    f.Report(3, dragon::v1::OK);
    CHECK(f.SentToN1() == std::vector<TaskId>{1});
    f.Report(4, dragon::v1::OK);
    CHECK(f.SentToN1() == std::vector<TaskId>{2});
    f.Report(1, dragon::v1::OK);
    CHECK(f.SentToN1() == std::vector<TaskId>{5});
  }
}

TEST_CASE("locality: a node's new incarnation is preferred, not its lost one",
          "[head][locality]") {
  TwoNodes f;
  f.head.AgentLost(f.n2, "killed");
  auto box3 = std::make_shared<AgentOutbox>();
  AgentIndex again = RegisterReady(&f.head, box3, "n2", 1);
  REQUIRE(again != f.n2);
  f.SubmitWithData(1, "n2");
  CHECK(Fixture::TasksIn(box3->TakeAll()) == std::vector<TaskId>{1});
  CHECK(f.SentToN1().empty());
}

TEST_CASE("locality: a plain task with a priority keeps its data node", "[head][locality]") {
  TwoNodes f;
  dragon::v1::ResourceRequest urgent;
  urgent.set_priority(5);
  f.SubmitWithData(1, "n2", &urgent);
  CHECK(f.SentToN2() == std::vector<TaskId>{1});
}

}  // namespace
}  // namespace dragon::daemon
