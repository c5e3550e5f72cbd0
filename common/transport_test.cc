#include "common/transport.h"

#include <catch2/catch.hpp>
#include <memory>
#include <string>

#include "proto/head.grpc.pb.h"

namespace dragon::common {
namespace {

constexpr char kToken[] = "0123456789abcdef0123456789abcdef";

// Answers Status only, after the token check every real handler does first.
class CheckedService final : public dragon::v1::HeadService::Service {
 public:
  explicit CheckedService(const TokenCheck* check) : check_(check) {}
  grpc::Status Status(grpc::ServerContext* context, const dragon::v1::StatusRequest*,
                      dragon::v1::StatusReply* reply) override {
    if (grpc::Status auth = check_->Check(*context); !auth.ok()) return auth;
    reply->set_run_id("checked");
    return grpc::Status::OK;
  }

 private:
  const TokenCheck* check_;
};

struct TestServer {
  explicit TestServer(std::string token)
      : check(std::move(token), "$DRAGON_TOKEN or /run/token"), service(&check) {
    grpc::ServerBuilder builder;
    REQUIRE(ConfigureServer(&builder, "127.0.0.1:0", ServerTransport{}, &port).ok());
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    REQUIRE(server != nullptr);
    REQUIRE(port > 0);
  }
  ~TestServer() { server->Shutdown(); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }

  TokenCheck check;
  CheckedService service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

grpc::Status CallStatus(const std::string& address, const std::string& token) {
  ClientTransport transport;
  transport.token = token;
  auto channel = MakeChannel(address, transport);
  REQUIRE(channel.ok());
  auto stub = dragon::v1::HeadService::NewStub(*channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  dragon::v1::StatusReply reply;
  grpc::Status status = stub->Status(&context, dragon::v1::StatusRequest(), &reply);
  if (status.ok()) CHECK(reply.run_id() == "checked");
  return status;
}

TEST_CASE("the channel's interceptor sends the token and the server accepts it") {
  TestServer server(kToken);
  CHECK(CallStatus(server.address(), kToken).ok());
}

TEST_CASE("no token and a wrong token are refused with UNAUTHENTICATED saying which and where") {
  TestServer server(kToken);
  grpc::Status none = CallStatus(server.address(), "");
  CHECK(none.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(none.error_message().find("carried no token") != std::string::npos);
  CHECK(none.error_message().find("$DRAGON_TOKEN or /run/token") != std::string::npos);
  grpc::Status wrong = CallStatus(server.address(), "fedcba9876543210fedcba9876543210");
  CHECK(wrong.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(wrong.error_message().find("carried a wrong token") != std::string::npos);
  // A prefix of the right token is wrong too.
  CHECK(CallStatus(server.address(), std::string(kToken).substr(0, 16)).error_code() ==
        grpc::StatusCode::UNAUTHENTICATED);
}

TEST_CASE("without an expected token (--auth none) every call passes") {
  TestServer server("");
  CHECK(CallStatus(server.address(), "").ok());
  CHECK(CallStatus(server.address(), kToken).ok());
}

TEST_CASE("TokensEqual compares whole strings") {
  CHECK(TokensEqual("abc", "abc"));
  CHECK_FALSE(TokensEqual("abc", "abd"));
  CHECK_FALSE(TokensEqual("abc", "abcd"));
  CHECK_FALSE(TokensEqual("", "a"));
}

TEST_CASE("a TLS CA file that cannot be read is an error naming it") {
  ClientTransport transport;
  transport.tls_ca = "/nonexistent/ca.pem";
  auto channel = MakeChannel("127.0.0.1:1", transport);
  REQUIRE_FALSE(channel.ok());
  CHECK(std::string(channel.status().message()).find("/nonexistent/ca.pem") != std::string::npos);
}

TEST_CASE("a server certificate without its key is refused") {
  grpc::ServerBuilder builder;
  ServerTransport transport;
  transport.tls.cert = "/nonexistent/cert.pem";
  int port = 0;
  absl::Status st = ConfigureServer(&builder, "127.0.0.1:0", transport, &port);
  REQUIRE_FALSE(st.ok());
  CHECK(std::string(st.message()).find("--tls-key") != std::string::npos);
}

}  // namespace
}  // namespace dragon::common
