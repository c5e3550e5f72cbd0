// What the Head's unit tests share: in-memory outboxes stand in for the gRPC
// streams, a FakeClock for time, and helpers that play a well-behaved agent.
#ifndef DRAGON_DAEMON_HEAD_TEST_FIXTURE_H_
#define DRAGON_DAEMON_HEAD_TEST_FIXTURE_H_

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "daemon/head.h"

namespace dragon::daemon {

inline HeadOptions TestOptions(int64_t keep_finished, uint32_t infra_retries = 1,
                               const common::Clock* clock = nullptr) {
  HeadOptions o;
  o.run_id = "test";
  o.version = "t";
  o.max_payload_bytes = 100;
  o.prefetch_per_worker = 1;
  o.keep_finished = keep_finished;
  o.infra_retries = infra_retries;
  o.clock = clock;
  return o;
}

// The seq of the last Ping in `messages`, or 0.
inline uint64_t LastPing(const std::vector<dragon::v1::HeadToAgent>& messages) {
  uint64_t seq = 0;
  for (const auto& m : messages) {
    if (m.has_ping()) seq = m.ping().seq();
  }
  return seq;
}

// Registers an agent and answers its first ping, as a healthy agent's task
// loop does; returns its index. Messages before the answer are consumed.
inline AgentIndex RegisterReady(Head* head, std::shared_ptr<AgentOutbox> box,
                                const std::string& node, uint32_t workers,
                                uint64_t previous_incarnation = 0, int* drops = nullptr) {
  dragon::v1::Register reg;
  reg.set_protocol_version(kProtocolVersion);
  reg.set_node_id(node);
  reg.set_workers(workers);
  reg.set_pid(1000);
  reg.set_previous_incarnation(previous_incarnation);
  AgentLink link{box, [drops] {
                   if (drops != nullptr) ++*drops;
                 },
                 "test"};
  auto registration = head->RegisterAgent(reg, std::move(link));
  REQUIRE(registration.ok());
  const uint64_t seq = LastPing(box->TakeAll());
  REQUIRE(seq > 0);
  dragon::v1::Heartbeat beat;
  beat.set_ping_seq(seq);
  beat.set_ready_workers(workers);
  head->Heartbeat(registration->index, beat);
  return registration->index;
}

struct Fixture {
  common::FakeClock clock;
  Head head;
  std::shared_ptr<SessionOutbox> session_box = std::make_shared<SessionOutbox>();
  std::shared_ptr<AgentOutbox> agent_box = std::make_shared<AgentOutbox>();
  SessionId session = 0;
  AgentIndex agent = kNoAgent;
  int drops = 0;  // times the head dropped an agent stream

  explicit Fixture(int64_t keep_finished = kDefaultKeepFinished, uint32_t infra_retries = 1,
                   bool accepted_with_results = false)
      : head(TestOptions(keep_finished, infra_retries, &clock)) {
    dragon::v1::Hello hello;
    hello.set_protocol_version(kProtocolVersion);
    hello.set_cwd("/work");
    hello.set_accepted_with_results(accepted_with_results);
    auto welcome = head.OpenSession(hello, session_box, "test");
    REQUIRE(welcome.ok());
    session = welcome->session_id();
  }

  void AddAgent(uint32_t workers, const std::string& node = "n1", uint64_t previous = 0) {
    agent = RegisterReady(&head, agent_box, node, workers, previous, &drops);
  }

  void Submit(int count, const std::string& payload = "p") {
    dragon::v1::SubmitBatch batch;
    for (int i = 0; i < count; ++i) {
      auto* t = batch.add_tasks();
      t->set_client_ref(next_ref++);
      t->set_kind(dragon::v1::PYTHON);
      t->set_payload(payload);
    }
    head.Submit(session, &batch);
  }

  // Task ids sent to the agent so far, in order (other messages are dropped).
  std::vector<TaskId> SentToAgent() { return TasksIn(agent_box->TakeAll()); }

  static std::vector<TaskId> TasksIn(const std::vector<dragon::v1::HeadToAgent>& messages) {
    std::vector<TaskId> ids;
    for (auto& m : messages) {
      for (auto& t : m.tasks().tasks()) {
        ids.push_back(t.task_id());
        CHECK(t.cwd() == "/work");
      }
    }
    return ids;
  }

  std::vector<dragon::v1::ClientResult> Results() {
    std::vector<dragon::v1::ClientResult> out;
    for (auto& m : session_box->TakeAll()) {
      for (auto& r : m.results().results()) out.push_back(r);
    }
    return out;
  }

  void Started(TaskId id, AgentIndex on = kNoAgent) {
    dragon::v1::AgentUpdate update;
    update.add_started()->set_task_id(id);
    head.ApplyUpdate(on == kNoAgent ? agent : on, &update);
  }

  void Report(TaskId id, dragon::v1::Outcome outcome, const std::string& data = "",
              AgentIndex on = kNoAgent) {
    dragon::v1::AgentUpdate update;
    auto* s = update.add_started();
    s->set_task_id(id);
    s->set_worker_pid(42);
    auto* r = update.add_results();
    r->set_task_id(id);
    r->set_outcome(outcome);
    r->set_data(data);
    head.ApplyUpdate(on == kNoAgent ? agent : on, &update);
  }

  dragon::v1::TaskState State(TaskId id) { return head.GetTask(id)->state(); }

  uint64_t next_ref = 100;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_HEAD_TEST_FIXTURE_H_
