#include "common/transport.h"

#include <grpcpp/support/client_interceptor.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::common {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read the ", what, " ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (buffer.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the ", what, " ", path, " is empty"));
  }
  return buffer.str();
}

// Adds the token to the initial metadata of every call of the channel.
class TokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(const std::string* value) : value_(value) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({kAuthMetadataKey, *value_});
    }
    methods->Proceed();
  }

 private:
  const std::string* value_;  // owned by the factory, which the channel keeps
};

class TokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(const std::string& token)
      : value_(absl::StrCat(kBearerPrefix, token)) {}

  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new TokenInterceptor(&value_);
  }

 private:
  const std::string value_;
};

void SetKeepalive(const KeepaliveOptions& keepalive, grpc::ChannelArguments* args) {
  args->SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(absl::ToInt64Milliseconds(keepalive.time)));
  args->SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
               static_cast<int>(absl::ToInt64Milliseconds(keepalive.timeout)));
  args->SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
}

}  // namespace

bool TokensEqual(const std::string& a, const std::string& b) {
  // Length is not secret (every token is 64 hex digits); the contents are.
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]);
  }
  return diff == 0;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address,
                                                           const ClientTransport& transport) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  SetKeepalive(transport.keepalive, &args);
  if (transport.own_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (transport.fast_reconnect) {
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (!transport.tls_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadPem(transport.tls_ca, "TLS CA certificate");
    if (!ca.ok()) return ca.status();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = *ca;
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  if (!transport.token.empty()) {
    interceptors.push_back(std::make_unique<TokenInterceptorFactory>(transport.token));
  }
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, credentials, args,
                                                                 std::move(interceptors));
}

absl::Status ConfigureServer(grpc::ServerBuilder* builder, const std::string& listen,
                             const ServerTransport& transport, int* selected_port) {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (transport.tls.enabled()) {
    if (transport.tls.key.empty()) {
      return absl::InvalidArgumentError("--tls-cert needs --tls-key (the certificate's private key)");
    }
    absl::StatusOr<std::string> cert = ReadPem(transport.tls.cert, "TLS certificate (--tls-cert)");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(transport.tls.key, "TLS private key (--tls-key)");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    credentials = grpc::SslServerCredentials(ssl);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }
  builder->AddListeningPort(listen, credentials, selected_port);
  const uint64_t max_receive = std::min<uint64_t>(transport.max_receive_bytes, INT32_MAX);
  builder->SetMaxReceiveMessageSize(static_cast<int>(max_receive));
  builder->SetMaxSendMessageSize(-1);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(transport.keepalive.time)));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(transport.keepalive.timeout)));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Clients ping every keepalive_time; gRPC's default server policy would
  // answer pings more frequent than every 5 minutes with GOAWAY.
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              static_cast<int>(absl::ToInt64Milliseconds(transport.keepalive.time) / 2));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // gRPC sets SO_REUSEPORT by default: a second head on a busy port would
  // silently share it with the first. Fail loudly instead.
  builder->AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  return absl::OkStatus();
}

TokenCheck::TokenCheck(std::string expected, std::string where)
    : expected_(std::move(expected)), where_(std::move(where)) {}

grpc::Status TokenCheck::Check(const grpc::ServerContextBase& context) const {
  if (expected_.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(kAuthMetadataKey);
  const char* problem = nullptr;
  if (it == metadata.end()) {
    problem = "carried no token";
  } else {
    const std::string value(it->second.data(), it->second.size());
    if (absl::StartsWith(value, kBearerPrefix) &&
        TokensEqual(value.substr(sizeof(kBearerPrefix) - 1), expected_)) {
      return grpc::Status::OK;
    }
    problem = "carried a wrong token";
  }
  LogRefusal(context.peer(), problem);
  return grpc::Status(
      grpc::StatusCode::UNAUTHENTICATED,
      absl::StrCat("dragond refused the request: it ", problem,
                   "; this head requires its run's token, which clients read from ", where_));
}

void TokenCheck::LogRefusal(const std::string& peer, const char* what) const {
  // At most 5 lines per second: someone hammering the port must not fill the disk.
  const int64_t now_s = absl::ToUnixSeconds(absl::Now());
  int64_t start = window_start_s_.load(std::memory_order_relaxed);
  if (now_s != start && window_start_s_.compare_exchange_strong(start, now_s)) {
    logged_in_window_.store(0, std::memory_order_relaxed);
  }
  if (logged_in_window_.fetch_add(1, std::memory_order_relaxed) >= 5) {
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const uint64_t suppressed = suppressed_.exchange(0, std::memory_order_relaxed);
  if (suppressed > 0) {
    spdlog::warn("refused a request from {}: it {} ({} more refusals not logged)", peer, what,
                 suppressed);
  } else {
    spdlog::warn("refused a request from {}: it {}", peer, what);
  }
}

}  // namespace dragon::common
