// The one place where gRPC servers and channels are made (dragond, the agent,
// the C++ clients and dragonctl): credentials (the run's token, optional
// TLS), keepalive and message limits. parsl_plugin/dragon_parsl/transport.py
// is its Python twin; the two must agree on everything in this header.
//
// Authentication: every call carries the run's token as the metadata entry
// `authorization: Bearer <token>` (added by a client interceptor, so no call
// site can forget it); the server checks it with TokenCheck at the start of
// every RPC and stream. TLS, when configured, encrypts the connection and
// lets clients verify the head; the token is still required over TLS.
//
// Keepalive: gRPC pings an idle connection every keepalive_time and drops it
// when the ping is not answered within keepalive_timeout. gRPC also sets
// TCP_USER_TIMEOUT on its sockets to keepalive_timeout (gRPC proposal A18), so
// unacknowledged data cannot keep a dead connection open for TCP's ~15 min
// either. Node liveness is not left to this: see daemon/membership.h.
#ifndef DRAGON_COMMON_TRANSPORT_H_
#define DRAGON_COMMON_TRANSPORT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dragon::common {

// Metadata key and value prefix of the token (lower case: gRPC metadata keys are).
inline constexpr char kAuthMetadataKey[] = "authorization";
inline constexpr char kBearerPrefix[] = "Bearer ";

// Headroom of the head's receive limit over its per-task payload limit: a
// message holds one oversize-capped task or result plus batching overhead
// (an agent update or a submission batch may exceed its soft cap by one item).
inline constexpr uint64_t kMessageHeadroomBytes = 80ull << 20;

struct KeepaliveOptions {
  absl::Duration time = absl::Seconds(10);
  absl::Duration timeout = absl::Seconds(10);
};

struct ClientTransport {
  std::string token;   // sent with every call; empty = none
  std::string tls_ca;  // PEM file of the CA that signed the head's certificate; empty = plaintext
  KeepaliveOptions keepalive;
  // Reconnect within ~100 ms-1 s instead of gRPC's default backoff (agents
  // start while the head may still be starting).
  bool fast_reconnect = false;
  // A TCP connection of this channel's own, not shared with other channels
  // to the same address (many simulated nodes in one benchmark process).
  bool own_connection = false;
};

struct TlsServerFiles {
  std::string cert;  // PEM certificate chain of the head
  std::string key;   // PEM private key
  bool enabled() const { return !cert.empty(); }
};

struct ServerTransport {
  TlsServerFiles tls;
  KeepaliveOptions keepalive;
  // Largest message received (see kMessageHeadroomBytes); sends are not
  // capped here, the head bounds what it sends by the payload limit.
  uint64_t max_receive_bytes = (256ull << 20) + kMessageHeadroomBytes;
};

// A channel to `address` (HOST:PORT) with the token interceptor, TLS when
// tls_ca is set, keepalive and no receive limit (the head, which bounds what
// it sends, tells the limit at connect time). Errors name the file that
// could not be read.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address,
                                                           const ClientTransport& transport);

// Adds a listening port on `listen` with the server credentials (TLS or
// plaintext) and sets keepalive and limits on `builder`. `selected_port`
// receives the port once the server is built.
absl::Status ConfigureServer(grpc::ServerBuilder* builder, const std::string& listen,
                             const ServerTransport& transport, int* selected_port);

// Checks the token of incoming calls. With an empty expected token
// (dragond --auth none) every call passes.
class TokenCheck {
 public:
  // `where` tells a refused client where the token is read from, e.g.
  // "$DRAGON_TOKEN or /run/dir/token".
  TokenCheck(std::string expected, std::string where);

  // OK, or UNAUTHENTICATED with a message saying whether the token was
  // missing or wrong and where it is read from. Refusals are logged with
  // the peer's address (at most a few lines per second; the rest counted).
  grpc::Status Check(const grpc::ServerContextBase& context) const;

  bool enabled() const { return !expected_.empty(); }

 private:
  void LogRefusal(const std::string& peer, const char* what) const;

  std::string expected_;
  std::string where_;
  mutable std::atomic<int64_t> window_start_s_{0};
  mutable std::atomic<int> logged_in_window_{0};
  mutable std::atomic<uint64_t> suppressed_{0};
};

// Constant-time comparison (the time taken does not reveal how many leading
// characters of a guess were right).
bool TokensEqual(const std::string& a, const std::string& b);

}  // namespace dragon::common

#endif  // DRAGON_COMMON_TRANSPORT_H_
