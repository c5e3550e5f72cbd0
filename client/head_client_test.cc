// HeadClient against an in-process HeadService test double (unit test only;
// tests/test_dragonctl.py covers the real dragond) and against a closed port.
#include "client/head_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

namespace dragon::client {
namespace {

using dragon::v1::HeadService;

class TestHead final : public HeadService::Service {
 public:
  grpc::Status Status(grpc::ServerContext*, const dragon::v1::StatusRequest*,
                      dragon::v1::StatusReply* reply) override {
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
  // ListNodes is left unimplemented on purpose (UNIMPLEMENTED path).
};

struct Server {
  TestHead service;
  std::unique_ptr<grpc::Server> server;
  std::string address;

  Server() {
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

TEST_CASE("Create rejects a malformed address") {
  auto c = HeadClient::Create("localhost", absl::Seconds(1));
  CHECK(absl::IsInvalidArgument(c.status()));
  CHECK(std::string(c.status().message()).find("'localhost'") != std::string::npos);
}

TEST_CASE("unary RPCs against a live server") {
  Server server;
  auto client = HeadClient::Create(server.address, absl::Seconds(1));
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
}

TEST_CASE("server errors become clear messages") {
  Server server;
  auto client = HeadClient::Create(server.address, absl::Seconds(1));
  REQUIRE(client.ok());

  auto missing = (*client)->GetTask(404);
  CHECK(absl::IsNotFound(missing.status()));
  CHECK(missing.status().message() == "no task 404 in this run");

  auto cancel = (*client)->Cancel(8);
  CHECK(absl::IsFailedPrecondition(cancel.status()));
  CHECK(cancel.status().message() == "Cancel: task 8 is being retried");

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
  auto client = HeadClient::Create(address, absl::Seconds(5));
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

TEST_CASE("error translation without a server") {
  const absl::Duration t = absl::Seconds(10);
  auto s = TranslateRpcError(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"),
                             "h:1", "Status", 0, t, /*channel_was_ready=*/false);
  CHECK(absl::IsUnavailable(s));
  CHECK(s.message() == "cannot reach dragond at h:1: no connection within 10s");

  s = TranslateRpcError(grpc::Status(grpc::StatusCode::UNAVAILABLE, "shutting down"), "h:1",
                        "Status", 0, t, /*channel_was_ready=*/true);
  CHECK(s.message() == "dragond at h:1 is unavailable (Status): shutting down");

  s = TranslateRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, "x"), "h:1", "ListNodes", 0, t,
                        true);
  CHECK(absl::IsNotFound(s));
  CHECK(s.message() == "ListNodes at h:1 failed: NOT_FOUND: x");

  // The head's reason for a task it no longer has is passed on as is.
  const std::string forgotten =
      "task 7 finished and was forgotten: this head keeps only the newest 10 finished tasks";
  s = TranslateRpcError(grpc::Status(grpc::StatusCode::NOT_FOUND, forgotten), "h:1", "GetTask", 7,
                        t, true);
  CHECK(absl::IsNotFound(s));
  CHECK(s.message() == forgotten);

  s = TranslateRpcError(grpc::Status(grpc::StatusCode::INTERNAL, "boom"), "h:1", "Cancel", 3, t,
                        true);
  CHECK(absl::IsInternal(s));
  CHECK(s.message() == "Cancel at h:1 failed: INTERNAL: boom");
}

}  // namespace
}  // namespace dragon::client
