// SimAgentHost against a real Head behind an in-process gRPC server.
#include "bench/sim_agent_host.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <set>
#include <thread>

#include "agent/simulated_pool.h"
#include "common/transport.h"
#include "daemon/agent_stream.h"

namespace dragon::bench {
namespace {

using daemon::Head;

TEST_CASE("hosted agents register, answer every task once, leave on shutdown",
          "[sim_agent_host]") {
  Head head([] {
    daemon::HeadOptions o;
    o.run_id = "test";
    o.version = "t";
    o.max_prefetch_per_worker = 16;
    return o;
  }());
  const std::string token = "0123456789abcdef0123456789abcdef";
  common::TokenCheck auth(token, "the test");
  daemon::AgentServiceImpl service(&head, &auth);
  int port = 0;
  grpc::ServerBuilder builder;
  REQUIRE(common::ConfigureServer(&builder, "127.0.0.1:0", common::ServerTransport{}, &port).ok());
  builder.RegisterService(&service);
  daemon::CompletionLoop loop(&builder);
  auto server = builder.BuildAndStart();
  REQUIRE(server != nullptr);
  loop.Start();
  service.AcceptOn(&loop);

  SimAgentHostOptions options;
  options.head_address = "127.0.0.1:" + std::to_string(port);
  options.agents = 20;
  options.workers = 4;
  options.token = token;
  SimAgentHost host(options);
  REQUIRE(host.Start(absl::Seconds(30)).ok());
  const dragon::v1::ListNodesReply nodes = head.ListNodes();
  REQUIRE(nodes.nodes_size() == 20);
  // Agents register concurrently: ListNodes is in registration order, not by name.
  std::set<std::string> ids;
  for (const auto& n : nodes.nodes()) {
    ids.insert(n.node_id());
    CHECK(n.workers() == 4);
  }
  CHECK(ids.size() == 20);
  CHECK(ids.count("sim-000") == 1);
  CHECK(ids.count("sim-019") == 1);

  auto session_box = std::make_shared<daemon::SessionOutbox>();
  dragon::v1::Hello hello;
  hello.set_protocol_version(daemon::kProtocolVersion);
  auto welcome = head.OpenSession(hello, session_box, "test");
  REQUIRE(welcome.ok());
  constexpr int kTasks = 5000;
  dragon::v1::SubmitBatch batch;
  for (int i = 0; i < kTasks; ++i) {
    auto* t = batch.add_tasks();
    t->set_client_ref(i);
    t->set_kind(dragon::v1::PYTHON);
    t->set_payload("p");
  }
  head.Submit(welcome->session_id(), &batch);
  std::vector<int> seen(kTasks, 0);
  int got = 0;
  for (int i = 0; i < 2000 && got < kTasks; ++i) {
    for (auto& m : session_box->TakeAll()) {
      for (const auto& r : m.results().results()) {
        ++seen[r.client_ref()];
        ++got;
        CHECK(r.result().outcome() == dragon::v1::OK);
        CHECK(r.result().error() == agent::kSimulatedMarker);
        CHECK(r.result().data().empty());
      }
    }
    if (got < kTasks) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(got == kTasks);
  for (int n : seen) CHECK(n == 1);
  CHECK(host.tasks_done() == kTasks);

  head.BeginShutdown("test over");
  CHECK(host.Wait().ok());
  CHECK(head.WaitForAgentsGone(absl::Seconds(10)));
  loop.Stop(server.get(), absl::Seconds(2));
}

TEST_CASE("an unreachable head is reported, not waited on forever", "[sim_agent_host]") {
  SimAgentHostOptions options;
  options.head_address = "127.0.0.1:1";  // nothing listens there
  options.agents = 2;
  SimAgentHost host(options);
  absl::Status st = host.Start(absl::Seconds(20));
  CHECK_FALSE(st.ok());
}

}  // namespace
}  // namespace dragon::bench
