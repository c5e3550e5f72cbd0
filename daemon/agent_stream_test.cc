// AgentStream over a real in-process gRPC server and raw client streams:
// registration, tasks out and results in, refusals, protocol errors, a lost
// agent and the head's shutdown, with no head thread per stream.
#include "daemon/agent_stream.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <thread>

namespace dragon::daemon {
namespace {

using Stream = grpc::ClientReaderWriter<dragon::v1::AgentMessage, dragon::v1::HeadToAgent>;

struct Server {
  Head head{[] {
    HeadOptions o;
    o.run_id = "test";
    o.version = "t";
    return o;
  }()};
  AgentServiceImpl service{&head};
  std::unique_ptr<grpc::Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<dragon::v1::AgentService::Stub> stub;
  std::shared_ptr<SessionOutbox> session_box = std::make_shared<SessionOutbox>();
  SessionId session = 0;

  Server() {
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    REQUIRE(server != nullptr);
    REQUIRE(port != 0);
    channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                  grpc::InsecureChannelCredentials());
    stub = dragon::v1::AgentService::NewStub(channel);
    dragon::v1::Hello hello;
    hello.set_protocol_version(kProtocolVersion);
    auto welcome = head.OpenSession(hello, session_box, "test");
    REQUIRE(welcome.ok());
    session = welcome->session_id();
  }
  ~Server() { server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2)); }

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

TEST_CASE("an agent registers, gets tasks and returns results", "[agent_stream]") {
  Server s;
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> stream = s.stub->Connect(&ctx);
  REQUIRE(stream->Write(Register("n1", 2)));
  dragon::v1::HeadToAgent msg;
  REQUIRE(stream->Read(&msg));
  REQUIRE(msg.has_registered());
  CHECK(msg.registered().run_id() == "test");

  s.Submit(10);
  int done = 0;
  while (done < 10) {
    REQUIRE(stream->Read(&msg));
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
  dragon::v1::HeadToAgent msg;
  REQUIRE(stream->Read(&msg));
  REQUIRE(msg.has_registered());
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
  REQUIRE(a->Read(&msg));
  REQUIRE(b->Read(&msg));
  ctx1.TryCancel();
  CHECK(a->Finish().error_code() == grpc::StatusCode::CANCELLED);
  CHECK(s.WaitForNodeState("a", "lost"));
  s.head.BeginShutdown("test over");
  REQUIRE(b->Read(&msg));
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
    dragon::v1::HeadToAgent msg;
    REQUIRE(streams.back()->Read(&msg));
    REQUIRE(msg.has_registered());
  }
  s.Submit(kAgents * 2);  // 2 per agent fills every agent exactly
  std::vector<std::thread> agents;
  for (int i = 0; i < kAgents; ++i) {
    agents.emplace_back([&, i] {
      dragon::v1::HeadToAgent msg;
      int got = 0;
      while (got < 2 && streams[i]->Read(&msg)) {
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

}  // namespace
}  // namespace dragon::daemon
