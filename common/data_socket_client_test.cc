#include "common/data_socket_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "common/test_dir.h"

namespace dragon::common {
namespace {

struct TempDir : TestDir {
  TempDir() : TestDir("/tmp/dragon-data-client-test-") {}
};

// A bound Unix socket at `path`, listening or not (a SIGKILLed agent leaves
// one that nobody listens on).
int BoundSocket(const std::string& path, bool listening) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  if (listening) REQUIRE(listen(fd, 8) == 0);
  return fd;
}

TEST_CASE("an agent that dies after taking the request is Unavailable, and the call is not repeated") {
  TempDir dir;
  const std::string path = dir.path + "/dies.sock";
  const int listener = BoundSocket(path, true);
  int requests_seen = 0;
  std::thread agent([&] {
    // Takes one whole request, then "dies": closes without a reply. Then
    // waits (bounded) for a second connection, which must not come.
    const int conn = accept(listener, nullptr, nullptr);
    REQUIRE(conn >= 0);
    SocketReader reader(conn);
    char header[kDataRequestHeaderSize];
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    REQUIRE(reader.ReadExactly(header, sizeof(header), deadline, deadline).ok());
    DataRequestHeader h;
    REQUIRE(DecodeDataRequestHeader(header, kMaxDataBodyBytes, &h).ok());
    std::string body;
    REQUIRE(reader.ReadInto(&body, h.body_size, deadline).ok());
    ++requests_seen;
    close(conn);
    pollfd p{listener, POLLIN, 0};
    if (poll(&p, 1, 300) == 1) ++requests_seen;
  });
  DataCallResult r = CallDataSocket(path, DataMethod::kChannel, "send me", absl::Seconds(10));
  agent.join();
  close(listener);
  CHECK(r.unreachable);
  CHECK(r.status.code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(r.status.message(), "closed the connection before it answered"));
  CHECK(requests_seen == 1);
}

TEST_CASE("a dead agent's socket (nobody listening) is Unavailable naming why") {
  TempDir dir;
  const std::string path = dir.path + "/dead.sock";
  const int fd = BoundSocket(path, false);
  DataCallResult r = CallDataSocket(path, DataMethod::kDict, "x", absl::Seconds(10));
  close(fd);
  CHECK(r.unreachable);
  CHECK(r.status.code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(r.status.message(), "connection refused"));
}

TEST_CASE("a request over the frame limit is refused before anything is sent") {
  // Only the size is looked at: a view of that length over a small buffer.
  const char byte = 0;
  DataCallResult r = CallDataSocket("/nonexistent.sock", DataMethod::kDict,
                                    absl::string_view(&byte, size_t{kMaxDataBodyBytes} + 1),
                                    absl::Seconds(1));
  CHECK_FALSE(r.unreachable);
  CHECK(r.status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(r.status.message(), "exceeds the data socket's maximum"));
}

}  // namespace
}  // namespace dragon::common
