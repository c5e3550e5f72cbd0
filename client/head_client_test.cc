// HeadClient against an in-process HeadService test double (unit test only;
// tests/test_dragonctl.py covers the real dragond), one that checks the token
// like dragond does (common::TokenCheck), and a closed port.
#include "client/head_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/transport.h"

namespace dragon::client {
namespace {

using dragon::v1::HeadService;

constexpr char kToken[] = "0123456789abcdef0123456789abcdef";

class TestHead final : public HeadService::Service {
 public:
  // With an empty token every call passes, as with dragond --auth none.
  explicit TestHead(const std::string& token = "")
      : auth_(token, "$DRAGON_TOKEN or /run/dir/token") {}

  grpc::Status Status(grpc::ServerContext* context, const dragon::v1::StatusRequest*,
                      dragon::v1::StatusReply* reply) override {
    if (grpc::Status refused = auth_.Check(*context); !refused.ok()) return refused;
    reply->set_run_id("run-1");
    reply->set_workers(3);
    return grpc::Status::OK;
  }
  grpc::Status ListTasks(grpc::ServerContext*, const dragon::v1::ListTasksRequest* request,
                         dragon::v1::ListTasksReply* reply) override {
    // Echo the request so the test sees what the client sent.
    auto* t = reply->add_tasks();
    t->set_state(request->state());
    reply->set_total_matching(request->limit());
    return grpc::Status::OK;
  }
  grpc::Status GetTask(grpc::ServerContext*, const dragon::v1::GetTaskRequest* request,
                       dragon::v1::TaskInfo* reply) override {
    if (request->task_id() == 404) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such task");
    }
    if (request->task_id() == 500) {
      // Slower than the client's deadline.
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    }
    reply->set_task_id(request->task_id());
    return grpc::Status::OK;
  }
  grpc::Status Cancel(grpc::ServerContext*, const dragon::v1::CancelRequest* request,
                      dragon::v1::CancelReply*) override {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("task ", request->task_id(), " is being retried"));
  }
  grpc::Status DrainNode(grpc::ServerContext*, const dragon::v1::DrainNodeRequest* request,
                         dragon::v1::NodeInfo* reply) override {
    if (request->node_id() != "local-0") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("no node '", request->node_id(), "' in this run"));
    }
    reply->set_node_id(request->node_id());
    reply->set_state(request->drain() ? "draining" : "ready");
    return grpc::Status::OK;
  }
  grpc::Status AddNodes(grpc::ServerContext* context, const dragon::v1::AddNodesRequest* request,
                        dragon::v1::AddNodesReply* reply) override {
    // The real head waits for the agents: longer than the client's timeout.
    std::this_thread::sleep_for(std::chrono::milliseconds(1300));
    if (context->deadline() < std::chrono::system_clock::now() + std::chrono::seconds(30)) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "the client's deadline leaves no time to wait");
    }
    for (const std::string& host : request->hosts()) {
      if (host == "h1") {
        return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "an agent on h1 is already running");
      }
      if (host == "bad") {
        reply->add_failed("bad: ssh to bad exited with code 255");
        continue;
      }
      auto* n = reply->add_nodes();
      n->set_node_id(host);
      n->set_state("ready");
    }
    return grpc::Status::OK;
  }
  grpc::Status RemoveNode(grpc::ServerContext*, const dragon::v1::RemoveNodeRequest* request,
                          dragon::v1::NodeInfo* reply) override {
    if (request->node_id() == "lost-1") {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "node lost-1 is lost (no heartbeat): there is nothing to drain");
    }
    if (request->node_id() != "local-0") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("no node '", request->node_id(), "' in this run"));
    }
    reply->set_node_id(request->node_id());
    reply->set_state("draining");
    reply->set_removing(true);
    return grpc::Status::OK;
  }
  // ListNodes is left unimplemented on purpose (UNIMPLEMENTED path).

 private:
  common::TokenCheck auth_;
};

struct Server {
  TestHead service;
  std::unique_ptr<grpc::Server> server;
  std::string address;

  explicit Server(const std::string& token = "") : service(token) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    REQUIRE(server != nullptr);
    address = absl::StrCat("127.0.0.1:", port);
  }
  ~Server() { server->Shutdown(std::chrono::system_clock::now()); }
};

// A port on which nothing listens: bind, read the port, close.
std::string ClosedPortAddress() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  close(fd);
  return absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
}

common::HeadLocation At(const std::string& address, const std::string& token = "",
                        const std::string& token_source = "") {
  common::HeadLocation location;
  location.address = address;
  location.source = "--head";
  location.token = token;
  location.token_source = token_source;
  return location;
}

TEST_CASE("Create rejects a malformed address") {
  auto c = HeadClient::Create(At("localhost"), absl::Seconds(1));
  CHECK(absl::IsInvalidArgument(c.status()));
  CHECK(std::string(c.status().message()).find("'localhost'") != std::string::npos);
}

TEST_CASE("unary RPCs against a live server") {
  Server server;
  auto client = HeadClient::Create(At(server.address), absl::Seconds(1));
  REQUIRE(client.ok());
  REQUIRE((*client)->Connect().ok());

  auto status = (*client)->Status();
  REQUIRE(status.ok());
  CHECK(status->run_id() == "run-1");
  CHECK(status->workers() == 3);

  auto tasks = (*client)->ListTasks(dragon::v1::RUNNING, 17);
  REQUIRE(tasks.ok());
  CHECK(tasks->tasks(0).state() == dragon::v1::RUNNING);
  CHECK(tasks->total_matching() == 17);

  auto task = (*client)->GetTask(12);
  REQUIRE(task.ok());
  CHECK(task->task_id() == 12);

  auto drained = (*client)->DrainNode("local-0", true);
  REQUIRE(drained.ok());
  CHECK(drained->state() == "draining");
  auto undrained = (*client)->DrainNode("local-0", false);
  REQUIRE(undrained.ok());
  CHECK(undrained->state() == "ready");
}

TEST_CASE("AddNodes waits for the agents beyond the timeout; RemoveNode") {
  Server server;
  auto client = HeadClient::Create(At(server.address), absl::Seconds(1));
  REQUIRE(client.ok());

  auto added = (*client)->AddNodes({"h4", "bad"});
  REQUIRE(added.ok());
  REQUIRE(added->nodes_size() == 1);
  CHECK(added->nodes(0).node_id() == "h4");
  CHECK(added->nodes(0).state() == "ready");
  REQUIRE(added->failed_size() == 1);
  CHECK(added->failed(0) == "bad: ssh to bad exited with code 255");

  auto again = (*client)->AddNodes({"h1"});
  CHECK(absl::IsAlreadyExists(again.status()));
  CHECK(again.status().message() == "AddNodes: an agent on h1 is already running");

  auto removing = (*client)->RemoveNode("local-0");
  REQUIRE(removing.ok());
  CHECK(removing->state() == "draining");
  CHECK(removing->removing());
  auto unknown = (*client)->RemoveNode("n9");
  CHECK(absl::IsNotFound(unknown.status()));
  CHECK(unknown.status().message() == "no node 'n9' in this run");
  auto lost = (*client)->RemoveNode("lost-1");
  CHECK(absl::IsFailedPrecondition(lost.status()));
  CHECK(lost.status().message() ==
        "RemoveNode: node lost-1 is lost (no heartbeat): there is nothing to drain");
}

TEST_CASE("UNIMPLEMENTED: a head without the method, or one saying why it cannot") {
  RpcErrorContext context;
  context.address = "h:1";
  context.method = "AddNodes";
  context.channel_was_ready = true;
  absl::Status s = TranslateRpcError(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, ""), context);
  CHECK(absl::IsUnimplemented(s));
  CHECK(s.message() == "dragond at h:1 does not support AddNodes (a different version?)");
  s = TranslateRpcError(
      grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this head has no launcher that can add nodes"),
      context);
  CHECK(absl::IsUnimplemented(s));
  CHECK(s.message() == "AddNodes: this head has no launcher that can add nodes");
}

TEST_CASE("server errors become clear messages") {
  Server server;
  auto client = HeadClient::Create(At(server.address), absl::Seconds(1));
  REQUIRE(client.ok());

  auto missing = (*client)->GetTask(404);
  CHECK(absl::IsNotFound(missing.status()));
  CHECK(missing.status().message() == "no task 404 in this run");

  auto cancel = (*client)->Cancel(8);
  CHECK(absl::IsFailedPrecondition(cancel.status()));
  CHECK(cancel.status().message() == "Cancel: task 8 is being retried");

  auto unknown = (*client)->DrainNode("n9", true);
  CHECK(absl::IsNotFound(unknown.status()));
  CHECK(unknown.status().message() == "no node 'n9' in this run");

  auto nodes = (*client)->ListNodes();
  CHECK(absl::IsUnimplemented(nodes.status()));
  CHECK(std::string(nodes.status().message())
            .find("dragond at " + server.address + " does not support ListNodes") == 0);

  const auto start = std::chrono::steady_clock::now();
  auto slow = (*client)->GetTask(500);
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(absl::IsDeadlineExceeded(slow.status()));
  CHECK(slow.status().message() ==
        "dragond at " + server.address + " did not answer GetTask within 1s");
  CHECK(took < std::chrono::milliseconds(1400));
}

TEST_CASE("a closed port fails fast with 'cannot reach'") {
  const std::string address = ClosedPortAddress();
  auto client = HeadClient::Create(At(address), absl::Seconds(5));
  REQUIRE(client.ok());

  const auto start = std::chrono::steady_clock::now();
  auto status = (*client)->Status();
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(absl::IsUnavailable(status.status()));
  const std::string msg(status.status().message());
  INFO(msg);
  CHECK(msg.rfind("cannot reach dragond at " + address + ": ", 0) == 0);
  CHECK(took < std::chrono::seconds(4));

  auto connect = (*client)->Connect();
  CHECK(absl::IsUnavailable(connect));
  CHECK(std::string(connect.message()).rfind("cannot reach dragond at " + address, 0) == 0);
}

RpcErrorContext Context(const char* method, bool ready, uint64_t task_id = 0) {
  RpcErrorContext c;
  c.address = "h:1";
  c.method = method;
  c.timeout = absl::Seconds(10);
  c.channel_was_ready = ready;
  c.task_id = task_id;
  return c;
}

TEST_CASE("error translation without a server") {
  auto s = TranslateRpcError(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"),
                             Context("Status", /*ready=*/false));
  CHECK(absl::IsUnavailable(s));
  CHECK(s.message() == "cannot reach dragond at h:1: no connection within 10s");

  s = TranslateRpcError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "shutting down"),
                        Context("Status", true));
  CHECK(s.message() == "dragond at h:1 is unavailable (Status): shutting down");

  // A head that stops cancels what it serves ('dragonctl top' sees it as the head goes).
  s = TranslateRpcError(grpc::Status(grpc::StatusCode::CANCELLED, "CANCELLED"), Context("Status", true));
  CHECK(absl::IsUnavailable(s));
  CHECK(s.message() == "dragond at h:1 ended Status without an answer (CANCELLED: a head cancels the "
                       "calls in flight when it stops)");

  s = TranslateRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, "x"), Context("ListNodes", true));
  CHECK(absl::IsNotFound(s));
  CHECK(s.message() == "ListNodes at h:1 failed: NOT_FOUND: x");

  // The head's reason for a task it no longer has is passed on as is.
  const std::string forgotten =
      "task 7 finished and was forgotten: this head keeps only the newest 10 finished tasks";
  s = TranslateRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, forgotten),
                        Context("GetTask", true, 7));
  CHECK(absl::IsNotFound(s));
  CHECK(s.message() == forgotten);

  // A node: the head's message when it names the node, else a plain one.
  RpcErrorContext drain = Context("DrainNode", true);
  drain.node_id = "n2";
  s = TranslateRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, "no node 'n2' in this run"),
                        drain);
  CHECK(s.message() == "no node 'n2' in this run");
  s = TranslateRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, "not found"), drain);
  CHECK(s.message() == "no node 'n2' in this run");
  s = TranslateRpcError(
      grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "node n2 is lost (no heartbeat)"), drain);
  CHECK(absl::IsFailedPrecondition(s));
  CHECK(s.message() == "DrainNode: node n2 is lost (no heartbeat)");

  s = TranslateRpcError(grpc::Status(grpc::StatusCode::INTERNAL, "boom"),
                        Context("Cancel", true, 3));
  CHECK(absl::IsInternal(s));
  CHECK(s.message() == "Cancel at h:1 failed: INTERNAL: boom");
}

TEST_CASE("UNAUTHENTICATED: the head's words and which token this client sent") {
  const std::string refused =
      "dragond refused the request: it carried a wrong token; this head requires its run's "
      "token, which clients read from $DRAGON_TOKEN or /r/token";
  RpcErrorContext c = Context("Status", true);
  c.sent_token = true;
  c.token_source = "$DRAGON_TOKEN";
  auto s = TranslateRpcError(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, refused), c);
  CHECK(absl::IsUnauthenticated(s));
  CHECK(s.message() == refused + "; the token this client sent came from $DRAGON_TOKEN");

  c.sent_token = false;
  c.token_source =
      "no token found: not given (--token-file), no $DRAGON_TOKEN, and no head.json under /h "
      "names h:1";
  s = TranslateRpcError(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "it carried no token"), c);
  CHECK(absl::IsUnauthenticated(s));
  CHECK(s.message() ==
        "it carried no token; this client sent no token (no token found: not given "
        "(--token-file), no $DRAGON_TOKEN, and no head.json under /h names h:1)");

  // A server that says nothing still gets a message naming it.
  c.token_source.clear();
  s = TranslateRpcError(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, ""), c);
  CHECK(s.message() == "dragond at h:1 refused Status: UNAUTHENTICATED; this client sent no token");
}

TEST_CASE("a head that checks the token: right, wrong and missing") {
  Server server(kToken);

  auto right = HeadClient::Create(At(server.address, kToken, "/run/dir/token"), absl::Seconds(5));
  REQUIRE(right.ok());
  auto status = (*right)->Status();
  REQUIRE(status.ok());
  CHECK(status->run_id() == "run-1");

  auto wrong = HeadClient::Create(
      At(server.address, "wrongwrongwrongwrongwrongwrongwr", "$DRAGON_TOKEN"), absl::Seconds(5));
  REQUIRE(wrong.ok());
  auto refused = (*wrong)->Status();
  CHECK(absl::IsUnauthenticated(refused.status()));
  CHECK(refused.status().message() ==
        "dragond refused the request: it carried a wrong token; this head requires its run's "
        "token, which clients read from $DRAGON_TOKEN or /run/dir/token; the token this client "
        "sent came from $DRAGON_TOKEN");

  auto none = HeadClient::Create(At(server.address, "", "no token found: not given"),
                                 absl::Seconds(5));
  REQUIRE(none.ok());
  refused = (*none)->Status();
  CHECK(absl::IsUnauthenticated(refused.status()));
  CHECK(refused.status().message() ==
        "dragond refused the request: it carried no token; this head requires its run's token, "
        "which clients read from $DRAGON_TOKEN or /run/dir/token; this client sent no token (no "
        "token found: not given)");
}

TEST_CASE("a TLS CA that cannot be read fails Create, naming the file") {
  common::HeadLocation location = At("127.0.0.1:1");
  location.tls_ca = "/nonexistent/ca.pem";
  auto c = HeadClient::Create(location, absl::Seconds(1));
  CHECK_FALSE(c.ok());
  CHECK(absl::StrContains(c.status().message(), "/nonexistent/ca.pem"));
}

}  // namespace
}  // namespace dragon::client
