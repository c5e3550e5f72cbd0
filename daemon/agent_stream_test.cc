// AgentStream over a real in-process gRPC server and raw client streams:
// registration, tasks out and results in, refusals, protocol errors, a lost
// agent and the head's shutdown, with no head thread per stream.
#include "daemon/agent_stream.h"

#include <catch2/catch.hpp>

#include "common/transport.h"
#include <chrono>
#include <memory>
#include <thread>

namespace dragon::daemon {
namespace {

using Stream = grpc::ClientReaderWriter<dragon::v1::AgentMessage, dragon::v1::HeadToAgent>;

constexpr char kToken[] = "0123456789abcdef0123456789abcdef";

struct Server {
  Head head{[] {
    HeadOptions o;
    o.run_id = "test";
    o.version = "t";
    return o;
  }()};
  common::TokenCheck auth{kToken, "the test"};
  AgentServiceImpl service{&head, &auth};
  std::unique_ptr<CompletionLoop> loop;
  std::unique_ptr<grpc::Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<dragon::v1::AgentService::Stub> stub;
  std::shared_ptr<SessionOutbox> session_box = std::make_shared<SessionOutbox>();
  SessionId session = 0;
  int port = 0;

  Server() {
    grpc::ServerBuilder builder;
    REQUIRE(common::ConfigureServer(&builder, "127.0.0.1:0", common::ServerTransport{}, &port).ok());
    builder.RegisterService(&service);
    loop = std::make_unique<CompletionLoop>(&builder);
    server = builder.BuildAndStart();
    REQUIRE(server != nullptr);
    REQUIRE(port != 0);
    loop->Start();
    service.AcceptOn(loop.get());
    stub = Stub(kToken);
    dragon::v1::Hello hello;
    hello.set_protocol_version(kProtocolVersion);
    auto welcome = head.OpenSession(hello, session_box, "test");
    REQUIRE(welcome.ok());
    session = welcome->session_id();
  }
  ~Server() { loop->Stop(server.get(), absl::Seconds(2)); }

  std::unique_ptr<dragon::v1::AgentService::Stub> Stub(const std::string& token) {
    common::ClientTransport transport;
    transport.token = token;
    auto made = common::MakeChannel("127.0.0.1:" + std::to_string(port), transport);
    REQUIRE(made.ok());
    channel = *made;
    return dragon::v1::AgentService::NewStub(channel);
  }

  void Submit(int count) {
    dragon::v1::SubmitBatch batch;
    for (int i = 0; i < count; ++i) {
      auto* t = batch.add_tasks();
      t->set_client_ref(i);
      t->set_kind(dragon::v1::PYTHON);
      t->set_payload("p");
    }
    head.Submit(session, &batch);
  }

  // Results that reached the session so far (waits up to 10 s for `n`).
  int WaitForResults(int n) {
    int got = 0;
    for (int i = 0; i < 1000 && got < n; ++i) {
      for (auto& m : session_box->TakeAll()) got += m.results().results_size();
      if (got < n) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return got;
  }

  bool WaitForNodeState(const std::string& node, const std::string& state) {
    for (int i = 0; i < 1000; ++i) {
      const dragon::v1::ListNodesReply nodes = head.ListNodes();
      for (const auto& n : nodes.nodes()) {
        if (n.node_id() == node && n.state() == state) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
};

dragon::v1::AgentMessage Register(const std::string& node, uint32_t workers,
                                  uint32_t version = kProtocolVersion) {
  dragon::v1::AgentMessage m;
  m.mutable_register_()->set_protocol_version(version);
  m.mutable_register_()->set_node_id(node);
  m.mutable_register_()->set_workers(workers);
  return m;
}

// Reads Registered and the first Ping and answers it, as an agent's task
// loop does; returns the incarnation.
uint64_t Join(Stream* stream) {
  dragon::v1::HeadToAgent msg;
  REQUIRE(stream->Read(&msg));
  REQUIRE(msg.has_registered());
  const uint64_t incarnation = msg.registered().incarnation();
  REQUIRE(stream->Read(&msg));
  REQUIRE(msg.has_ping());
  dragon::v1::AgentMessage beat;
  beat.mutable_heartbeat()->set_ping_seq(msg.ping().seq());
  REQUIRE(stream->Write(beat));
  return incarnation;
}

TEST_CASE("an agent registers, gets tasks and returns results", "[agent_stream]") {
  Server s;
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> stream = s.stub->Connect(&ctx);
  REQUIRE(stream->Write(Register("n1", 2)));
  CHECK(Join(stream.get()) == 1);
  dragon::v1::HeadToAgent msg;

  s.Submit(10);
  int done = 0;
  while (done < 10) {
    REQUIRE(stream->Read(&msg));
    if (msg.has_ping()) continue;
    REQUIRE(msg.has_tasks());
    dragon::v1::AgentMessage update;
    for (const auto& t : msg.tasks().tasks()) {
      auto* r = update.mutable_update()->add_results();
      r->set_task_id(t.task_id());
      r->set_outcome(dragon::v1::OK);
      ++done;
    }
    REQUIRE(stream->Write(update));
  }
  CHECK(s.WaitForResults(10) == 10);
  dragon::v1::AgentMessage beat;
  beat.mutable_heartbeat()->set_busy_workers(0);
  REQUIRE(stream->Write(beat));
  // The agent leaves: the head sees its stream end and finishes it cleanly.
  REQUIRE(stream->WritesDone());
  CHECK(stream->Finish().ok());
  CHECK(s.WaitForNodeState("n1", "lost"));
}

TEST_CASE("a refused Register ends the stream with the reason", "[agent_stream]") {
  Server s;
  grpc::ClientContext ctx;
  auto stream = s.stub->Connect(&ctx);
  REQUIRE(stream->Write(Register("n1", 2, kProtocolVersion + 1)));
  dragon::v1::HeadToAgent msg;
  // The head's version comes in a field the agent reads, then the error.
  REQUIRE(stream->Read(&msg));
  REQUIRE(msg.has_registered());
  CHECK(msg.registered().protocol_version() == kProtocolVersion);
  CHECK_FALSE(stream->Read(&msg));
  grpc::Status st = stream->Finish();
  CHECK(st.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(st.error_message().find("protocol version") != std::string::npos);
  CHECK(s.head.ListNodes().nodes_size() == 0);
}

TEST_CASE("a first message other than Register is refused", "[agent_stream]") {
  Server s;
  grpc::ClientContext ctx;
  auto stream = s.stub->Connect(&ctx);
  dragon::v1::AgentMessage beat;
  beat.mutable_heartbeat();
  REQUIRE(stream->Write(beat));
  dragon::v1::HeadToAgent msg;
  CHECK_FALSE(stream->Read(&msg));
  CHECK(stream->Finish().error_code() == grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_CASE("a protocol error after Register loses the agent and re-queues its tasks",
          "[agent_stream]") {
  Server s;
  s.Submit(3);
  grpc::ClientContext ctx;
  auto stream = s.stub->Connect(&ctx);
  REQUIRE(stream->Write(Register("n1", 1)));
  Join(stream.get());
  dragon::v1::HeadToAgent msg;
  REQUIRE(stream->Read(&msg));
  CHECK(msg.tasks().tasks_size() == 2);  // 1 worker x (1 + prefetch 1)
  REQUIRE(stream->Write(Register("n1", 1)));  // Register again: not allowed
  while (stream->Read(&msg)) {
  }
  CHECK(stream->Finish().error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(s.WaitForNodeState("n1", "lost"));
  dragon::v1::StatusReply status;
  s.head.FillStatus(&status);
  CHECK(status.tasks_by_state().at("PENDING") == 3);
}

TEST_CASE("a cancelled agent stream is lost; shutdown reaches the others", "[agent_stream]") {
  Server s;
  grpc::ClientContext ctx1, ctx2;
  auto a = s.stub->Connect(&ctx1);
  auto b = s.stub->Connect(&ctx2);
  REQUIRE(a->Write(Register("a", 1)));
  REQUIRE(b->Write(Register("b", 1)));
  dragon::v1::HeadToAgent msg;
  Join(a.get());
  Join(b.get());
  ctx1.TryCancel();
  CHECK(a->Finish().error_code() == grpc::StatusCode::CANCELLED);
  CHECK(s.WaitForNodeState("a", "lost"));
  s.head.BeginShutdown("test over");
  do {
    REQUIRE(b->Read(&msg));
  } while (msg.has_ping());
  REQUIRE(msg.has_shutdown());
  CHECK(msg.shutdown().reason() == "test over");
  REQUIRE(b->WritesDone());
  CHECK(b->Finish().ok());
  CHECK(s.head.WaitForAgentsGone(absl::Seconds(10)));
}

TEST_CASE("many agents at once, each with its own tasks", "[agent_stream][scale]") {
  Server s;
  constexpr int kAgents = 32;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < kAgents; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(s.stub->Connect(ctxs.back().get()));
    REQUIRE(streams.back()->Write(Register("n" + std::to_string(i), 1)));
    Join(streams.back().get());
  }
  s.Submit(kAgents * 2);  // 2 per agent fills every agent exactly
  std::vector<std::thread> agents;
  for (int i = 0; i < kAgents; ++i) {
    agents.emplace_back([&, i] {
      dragon::v1::HeadToAgent msg;
      int got = 0;
      while (got < 2 && streams[i]->Read(&msg)) {
        if (!msg.has_tasks()) continue;  // pings
        dragon::v1::AgentMessage update;
        for (const auto& t : msg.tasks().tasks()) {
          auto* r = update.mutable_update()->add_results();
          r->set_task_id(t.task_id());
          r->set_outcome(dragon::v1::OK);
          ++got;
        }
        streams[i]->Write(update);
      }
      streams[i]->WritesDone();
      while (streams[i]->Read(&msg)) {
      }
    });
  }
  for (auto& t : agents) t.join();
  CHECK(s.WaitForResults(kAgents * 2) == kAgents * 2);
  for (auto& st : streams) CHECK(st->Finish().ok());
}

TEST_CASE("a stream without the right token is refused before anything else", "[agent_stream]") {
  Server s;
  for (const std::string token : {"", "fedcba9876543210fedcba9876543210"}) {
    auto stub = s.Stub(token);
    grpc::ClientContext ctx;
    auto stream = stub->Connect(&ctx);
    stream->Write(Register("intruder", 1));
    dragon::v1::HeadToAgent msg;
    CHECK_FALSE(stream->Read(&msg));
    grpc::Status st = stream->Finish();
    CHECK(st.error_code() == grpc::StatusCode::UNAUTHENTICATED);
    CHECK(st.error_message().find("the test") != std::string::npos);
  }
  CHECK(s.head.ListNodes().nodes_size() == 0);
}

TEST_CASE("a restarted agent's registration drops the old incarnation's stream", "[agent_stream]") {
  Server s;
  grpc::ClientContext ctx1, ctx2;
  auto old_stream = s.stub->Connect(&ctx1);
  REQUIRE(old_stream->Write(Register("n1", 1)));
  CHECK(Join(old_stream.get()) == 1);
  auto new_stream = s.stub->Connect(&ctx2);
  REQUIRE(new_stream->Write(Register("n1", 1)));
  CHECK(Join(new_stream.get()) == 2);
  // The old stream ends from the head's side: it can deliver nothing more.
  dragon::v1::HeadToAgent msg;
  while (old_stream->Read(&msg)) {
  }
  CHECK_FALSE(old_stream->Finish().ok());
  CHECK(s.WaitForNodeState("n1", "ready"));  // once the heartbeat written above arrived
  auto nodes = s.head.ListNodes();
  REQUIRE(nodes.nodes_size() == 1);
  CHECK(nodes.nodes(0).incarnation() == 2);
  new_stream->WritesDone();
  while (new_stream->Read(&msg)) {
  }
  new_stream->Finish();
}

}  // namespace
}  // namespace dragon::daemon
