// The Head's TaskIO relay and TaskLogs with in-memory streams: a client's
// channel attached to an MPI job before and after it starts, frames both ways,
// the end of stdout, the window, a lost node, a task that never ran, a second
// client, and logs answered (or not) by the agent.
#include <catch2/catch.hpp>
#include <thread>

#include "absl/strings/match.h"
#include "daemon/head.h"
#include "daemon/head_test_fixture.h"

namespace dragon::daemon {
namespace {

using dragon::v1::HeadToAgent;
using dragon::v1::TaskIOFrame;

struct IOFixture {
  common::FakeClock clock;
  Head head{TestOptions(kDefaultKeepFinished, 0, &clock)};
  std::shared_ptr<SessionOutbox> session_box = std::make_shared<SessionOutbox>();
  std::shared_ptr<AgentOutbox> box = std::make_shared<AgentOutbox>();
  SessionId session = 0;
  AgentIndex agent = kNoAgent;
  uint64_t next_ref = 1;

  IOFixture() {
    dragon::v1::Hello hello;
    hello.set_protocol_version(kProtocolVersion);
    hello.set_cwd("/work");
    session = head.OpenSession(hello, session_box, "test")->session_id();
    dragon::v1::Register reg;
    reg.set_protocol_version(kProtocolVersion);
    reg.set_node_id("n1");
    reg.set_host("host1");
    reg.set_workers(4);
    reg.set_cores(4);
    reg.set_memory_bytes(1 << 30);
    reg.set_pid(1000);
    auto r = head.RegisterAgent(reg, AgentLink{box, [] {}, "test"});
    REQUIRE(r.ok());
    agent = r->index;
    dragon::v1::Heartbeat beat;
    beat.set_ping_seq(LastPing(box->TakeAll()));
    head.Heartbeat(agent, beat);
  }

  // Submits an EXECUTABLE task (MPI with `ranks` > 0); returns its id.
  TaskId Submit(uint32_t ranks) {
    dragon::v1::SubmitBatch batch;
    auto* t = batch.add_tasks();
    t->set_client_ref(next_ref++);
    t->set_kind(dragon::v1::EXECUTABLE);
    dragon::v1::ExecutableSpec spec;
    spec.add_argv("/bin/true");
    t->set_payload(spec.SerializeAsString());
    if (ranks > 0) t->mutable_resources()->set_ranks(ranks);
    head.Submit(session, &batch);
    for (auto& m : session_box->TakeAll()) {
      if (m.has_accepted()) return m.accepted().task_ids(0);
    }
    FAIL("not accepted");
    return 0;
  }

  std::vector<TaskIOFrame> ToAgent() {
    std::vector<TaskIOFrame> frames;
    for (auto& m : box->TakeAll()) {
      for (auto& f : m.task_io().frames()) frames.push_back(f);
    }
    return frames;
  }

  void FromAgent(std::vector<TaskIOFrame> frames, bool started_task = false, TaskId id = 0) {
    dragon::v1::AgentUpdate u;
    if (started_task) u.add_started()->set_task_id(id);
    for (auto& f : frames) *u.add_task_io() = f;
    head.ApplyUpdate(agent, &u);
  }

  static TaskIOFrame Open(TaskId id, uint64_t offset = 0) {
    TaskIOFrame f;
    f.set_task_id(id);
    f.set_open(true);
    f.set_stdout_offset(offset);
    return f;
  }
};

TEST_CASE("TaskIO: opened before the job starts, frames relayed both ways, ends at stdout's eof") {
  IOFixture f;
  const TaskId id = f.Submit(2);
  auto client = std::make_shared<TaskIOClient>();
  auto channel = f.head.OpenTaskIO(IOFixture::Open(id, 5), client, "peer");
  REQUIRE(channel.ok());
  // The assignment went out; the open waits for the job to start.
  CHECK(f.ToAgent().empty());
  TaskIOFrame in;
  in.set_data("5\n");
  f.head.TaskIOFromClient(*channel, in);
  CHECK(f.ToAgent().empty());
  f.FromAgent({}, /*started_task=*/true, id);
  std::vector<TaskIOFrame> sent = f.ToAgent();
  REQUIRE(sent.size() == 2);
  CHECK(sent[0].open());
  CHECK(sent[0].channel() == *channel);
  CHECK(sent[0].stdout_offset() == 5);
  CHECK(sent[1].data() == "5\n");
  CHECK(sent[1].channel() == *channel);

  TaskIOFrame started;
  started.set_task_id(id);
  started.set_channel(*channel);
  started.mutable_started()->set_leader_node("n1");
  TaskIOFrame out;
  out.set_task_id(id);
  out.set_channel(*channel);
  out.set_data("37\n");
  out.set_ack(2);
  f.FromAgent({started, out});
  std::vector<TaskIOFrame> got = client->outbox.TakeAll();
  REQUIRE(got.size() == 2);
  CHECK(got[0].started().leader_node() == "n1");
  CHECK(got[1].data() == "37\n");
  CHECK(got[1].ack() == 2);
  CHECK(!client->outbox.closed());

  TaskIOFrame eof;
  eof.set_task_id(id);
  eof.set_channel(*channel);
  eof.set_eof(true);
  f.FromAgent({eof});
  got = client->outbox.TakeAll();
  REQUIRE(got.size() == 1);
  CHECK(got[0].eof());
  CHECK(client->outbox.closed());
  CHECK(client->status().ok());
  // Frames of a closed channel go nowhere.
  f.head.TaskIOFromClient(*channel, in);
  CHECK(f.ToAgent().empty());
}

TEST_CASE("TaskIO refuses what it cannot serve") {
  IOFixture f;
  auto client = std::make_shared<TaskIOClient>();
  auto r = f.head.OpenTaskIO(IOFixture::Open(999), client, "peer");
  CHECK(absl::IsNotFound(r.status()));
  const TaskId plain = f.Submit(0);
  r = f.head.OpenTaskIO(IOFixture::Open(plain), client, "peer");
  REQUIRE(absl::IsFailedPrecondition(r.status()));
  CHECK(absl::StrContains(r.status().message(), "not an MPI job"));
}

TEST_CASE("TaskIO: a job cancelled before it ran ends its channel; a second client replaces the first") {
  IOFixture f;
  // Fill the node so that the next job waits.
  const TaskId big = f.Submit(4);
  const TaskId id = f.Submit(2);
  auto first = std::make_shared<TaskIOClient>();
  auto second = std::make_shared<TaskIOClient>();
  REQUIRE(f.head.OpenTaskIO(IOFixture::Open(id), first, "a").ok());
  REQUIRE(f.head.OpenTaskIO(IOFixture::Open(id), second, "b").ok());
  CHECK(first->outbox.closed());
  CHECK(absl::IsAborted(first->status()));
  CHECK(absl::StrContains(first->status().message(), "another client (b)"));
  REQUIRE(f.head.Cancel(id, "test", absl::ZeroDuration()).ok());
  CHECK(second->outbox.closed());
  CHECK(absl::IsFailedPrecondition(second->status()));
  CHECK(absl::StrContains(second->status().message(), "ended without running"));
  (void)big;
}

TEST_CASE("TaskIO: the node of rank 0 is lost: the stream ends saying so") {
  IOFixture f;
  const TaskId id = f.Submit(2);
  f.FromAgent({}, true, id);
  auto client = std::make_shared<TaskIOClient>();
  REQUIRE(f.head.OpenTaskIO(IOFixture::Open(id), client, "peer").ok());
  REQUIRE(f.ToAgent().size() == 1);
  f.head.AgentLost(f.agent, "stream broke");
  CHECK(client->outbox.closed());
  CHECK(absl::IsUnavailable(client->status()));
  CHECK(absl::StrContains(client->status().message(), "node n1"));
  CHECK(absl::StrContains(client->status().message(), "was lost"));
}

TEST_CASE("TaskIO: a client that ignores the window is cut off") {
  IOFixture f;
  const TaskId id = f.Submit(2);
  f.FromAgent({}, true, id);
  auto client = std::make_shared<TaskIOClient>();
  auto channel = f.head.OpenTaskIO(IOFixture::Open(id), client, "peer");
  REQUIRE(channel.ok());
  TaskIOFrame in;
  in.set_data(std::string(200 << 10, 'x'));
  f.head.TaskIOFromClient(*channel, in);
  f.head.TaskIOFromClient(*channel, in);
  CHECK(!client->outbox.closed());
  // Acknowledged: room again.
  TaskIOFrame ack;
  ack.set_task_id(id);
  ack.set_channel(*channel);
  ack.set_ack(400 << 10);
  f.FromAgent({ack});
  f.head.TaskIOFromClient(*channel, in);
  f.head.TaskIOFromClient(*channel, in);
  CHECK(!client->outbox.closed());
  f.head.TaskIOFromClient(*channel, in);
  CHECK(client->outbox.closed());
  CHECK(absl::IsResourceExhausted(client->status()));
}

TEST_CASE("TaskIO: attach to a job that already ran goes to its agent") {
  IOFixture f;
  const TaskId id = f.Submit(2);
  dragon::v1::AgentUpdate u;
  u.add_started()->set_task_id(id);
  auto* r = u.add_results();
  r->set_task_id(id);
  r->set_outcome(dragon::v1::OK);
  r->set_start_us(1);
  r->set_end_us(2);
  f.head.ApplyUpdate(f.agent, &u);
  f.box->TakeAll();
  auto client = std::make_shared<TaskIOClient>();
  auto channel = f.head.OpenTaskIO(IOFixture::Open(id), client, "peer");
  REQUIRE(channel.ok());
  auto sent = f.ToAgent();
  REQUIRE(sent.size() == 1);
  CHECK(sent[0].open());
  // The agent's error ends it.
  TaskIOFrame err;
  err.set_task_id(id);
  err.set_channel(*channel);
  err.set_error("forgotten");
  f.FromAgent({err});
  CHECK(absl::IsFailedPrecondition(client->status()));
}

TEST_CASE("TaskLogs asks the agent that ran the task") {
  IOFixture f;
  const TaskId id = f.Submit(2);
  dragon::v1::TaskLogsRequest req;
  req.set_task_id(id);
  req.set_rank(1);
  // Not started: a note, no query.
  auto pending = f.head.TaskLogs(req, absl::Seconds(1));
  REQUIRE(pending.ok());
  CHECK(absl::StrContains(pending->note(), "has not run yet"));
  f.FromAgent({}, true, id);
  f.box->TakeAll();
  std::thread agent([&] {
    for (int i = 0; i < 200; ++i) {
      for (auto& m : f.box->TakeAll()) {
        if (!m.has_task_logs()) continue;
        CHECK(m.task_logs().task_id() == id);
        CHECK(m.task_logs().rank() == 1);
        dragon::v1::AgentUpdate u;
        auto* a = u.add_task_logs();
        a->set_query_id(m.task_logs().query_id());
        auto* file = a->add_files();
        file->set_rank(1);
        file->set_stream("stdout");
        file->set_data("hello\n");
        f.head.ApplyUpdate(f.agent, &u);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  auto logs = f.head.TaskLogs(req, absl::Seconds(5));
  agent.join();
  REQUIRE(logs.ok());
  CHECK(logs->node() == "n1");
  CHECK(logs->host() == "host1");
  REQUIRE(logs->files_size() == 1);
  CHECK(logs->files(0).data() == "hello\n");
  // Nobody answers: the wait ends.
  auto late = f.head.TaskLogs(req, absl::Milliseconds(50));
  CHECK(absl::IsDeadlineExceeded(late.status()));
  // The node goes: its output is out of reach.
  f.head.AgentLost(f.agent, "gone");
  auto lost = f.head.TaskLogs(req, absl::Seconds(1));
  REQUIRE(absl::IsUnavailable(lost.status()));
  CHECK(absl::StrContains(lost.status().message(), "no longer connected"));
}

}  // namespace
}  // namespace dragon::daemon
