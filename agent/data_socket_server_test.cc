#include "agent/data_socket_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/data_socket_client.h"
#include "common/data_socket_frames.h"
#include "common/test_dir.h"

namespace dragon::agent {
namespace {

using common::CallDataSocket;
using common::DataMethod;

struct TempDir : common::TestDir {
  TempDir() : TestDir("/tmp/dragon-data-socket-test-") {}
};

// Echoes the body with the method in front; "fail:<code>" answers that code.
absl::StatusOr<std::string> Echo(uint8_t method, uint32_t, absl::string_view body) {
  if (absl::StartsWith(body, "fail:")) {
    return absl::Status(static_cast<absl::StatusCode>(std::stoi(std::string(body.substr(5)))),
                        absl::StrCat("asked to fail: ", body));
  }
  return absl::StrCat(method, ":", body);
}

// A raw connection, for what a well-behaved client never sends.
struct RawClient {
  explicit RawClient(const std::string& path) {
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }
  ~RawClient() { close(fd); }
  void Send(const std::string& bytes) const {
    REQUIRE(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
  }
  // Everything the server sends until it closes (bounded: 10 s).
  std::string ReadToEof() const {
    std::string all;
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      REQUIRE(poll(&p, 1, common::PollMillis(deadline)) == 1);
      char buf[4096];
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return all;
      all.append(buf, static_cast<size_t>(n));
    }
  }
  int fd = -1;
};

// Waits (bounded) until `done()`; the server's threads end asynchronously.
template <typename Fn>
bool WaitUntil(Fn done) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!done()) {
    if (absl::Now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

common::DataReplyHeader ReplyHeaderOf(const std::string& bytes) {
  REQUIRE(bytes.size() >= common::kDataReplyHeaderSize);
  common::DataReplyHeader h;
  REQUIRE(common::DecodeDataReplyHeader(bytes.data(), &h).ok());
  return h;
}

TEST_CASE("calls come back answered; errors keep their code and message; the socket is 0600 and removed") {
  TempDir dir;
  const std::string path = dir.path + "/a.sock";
  {
    auto server = DataSocketServer::Start(path, Echo);
    REQUIRE(server.ok());
    struct stat st {};
    REQUIRE(lstat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    common::DataCallResult r = CallDataSocket(path, DataMethod::kDict, "abc", absl::Seconds(10));
    REQUIRE(r.status.ok());
    CHECK(r.reply == "3:abc");
    r = CallDataSocket(path, DataMethod::kPull, "", absl::Seconds(10));  // an empty body
    REQUIRE(r.status.ok());
    CHECK(r.reply == "1:");
    r = CallDataSocket(path, DataMethod::kChannel, "fail:8", absl::Seconds(10));
    CHECK(r.status.code() == absl::StatusCode::kResourceExhausted);
    CHECK(r.status.message() == "asked to fail: fail:8");
    CHECK_FALSE(r.unreachable);
    // The same thread's calls share one connection.
    CHECK((*server)->connections() == 1);
  }
  CHECK_FALSE(std::filesystem::exists(path));
  common::DataCallResult gone = CallDataSocket(path, DataMethod::kDict, "x", absl::Seconds(10));
  CHECK(gone.unreachable);
  CHECK(gone.status.code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(gone.status.message(), "no such socket"));
}

TEST_CASE("an oversized length is answered ResourceExhausted and the connection closed; others go on") {
  TempDir dir;
  const std::string path = dir.path + "/big.sock";
  DataSocketServerOptions options;
  options.max_body_bytes = 1024;
  auto server = DataSocketServer::Start(path, Echo, options);
  REQUIRE(server.ok());
  RawClient raw(path);
  raw.Send(common::EncodeDataRequestHeader(DataMethod::kDict, 0, 3u << 30));  // announces 3 GiB
  const std::string got = raw.ReadToEof();
  const common::DataReplyHeader h = ReplyHeaderOf(got);
  CHECK(h.code == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(got, "maximum of 1024 bytes"));
  // Through the client: the same answer, not a broken pipe.
  common::DataCallResult r =
      CallDataSocket(path, DataMethod::kDict, std::string(4 << 20, 'v'), absl::Seconds(10));
  CHECK(r.status.code() == absl::StatusCode::kResourceExhausted);
  CHECK_FALSE(r.unreachable);
  r = CallDataSocket(path, DataMethod::kDict, "ok", absl::Seconds(10));
  CHECK(r.status.ok());
}

TEST_CASE("garbage is answered DataLoss and closed") {
  TempDir dir;
  const std::string path = dir.path + "/g.sock";
  auto server = DataSocketServer::Start(path, Echo);
  REQUIRE(server.ok());
  RawClient raw(path);
  raw.Send(std::string("\x02\x00\x00\x00garbage-garbage", 19));
  const std::string got = raw.ReadToEof();
  CHECK(ReplyHeaderOf(got).code == absl::StatusCode::kDataLoss);
  CHECK(WaitUntil([&] { return (*server)->connections() == 0; }));
}

TEST_CASE("a client that dies mid-frame, stalls mid-frame or sends nothing loses only its connection") {
  TempDir dir;
  const std::string path = dir.path + "/d.sock";
  DataSocketServerOptions options;
  options.stall_timeout = absl::Milliseconds(50);
  options.idle_timeout = absl::Milliseconds(200);
  std::atomic<int> handled{0};
  auto server = DataSocketServer::Start(
      path,
      [&](uint8_t method, uint32_t timeout_ms, absl::string_view body) {
        ++handled;
        return Echo(method, timeout_ms, body);
      },
      options);
  REQUIRE(server.ok());
  {
    // Dies after half a body: the handler never sees it.
    RawClient dying(path);
    dying.Send(common::EncodeDataRequestHeader(DataMethod::kDict, 0, 100) + std::string(50, 'x'));
  }
  {
    // Stalls after half a body: closed after the stall timeout.
    RawClient stalled(path);
    stalled.Send(common::EncodeDataRequestHeader(DataMethod::kDict, 0, 100) + std::string(50, 'x'));
    CHECK(stalled.ReadToEof().empty());
  }
  {
    // Connects and sends nothing: closed after the idle timeout.
    RawClient silent(path);
    CHECK(silent.ReadToEof().empty());
  }
  CHECK(WaitUntil([&] { return (*server)->connections() == 0; }));
  CHECK(handled.load() == 0);
  CHECK(CallDataSocket(path, DataMethod::kDict, "fine", absl::Seconds(10)).reply == "3:fine");
}

TEST_CASE("connections over the bound are refused naming it") {
  TempDir dir;
  const std::string path = dir.path + "/n.sock";
  DataSocketServerOptions options;
  options.max_connections = 2;
  auto server = DataSocketServer::Start(path, Echo, options);
  REQUIRE(server.ok());
  // Two other threads hold a connection each.
  absl::Notification hold, release;
  std::atomic<int> connected{0};
  std::vector<std::thread> holders;
  for (int i = 0; i < 2; ++i) {
    holders.emplace_back([&] {
      CHECK(CallDataSocket(path, DataMethod::kDict, "h", absl::Seconds(10)).status.ok());
      if (++connected == 2) hold.Notify();
      release.WaitForNotification();
    });
  }
  hold.WaitForNotification();
  common::DataCallResult r = CallDataSocket(path, DataMethod::kDict, "third", absl::Seconds(10));
  CHECK(r.status.code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(r.status.message(), "at most 2 connections"));
  release.Notify();
  for (auto& t : holders) t.join();  // their connections close with their threads
  CHECK(WaitUntil([&] { return (*server)->connections() == 0; }));
  CHECK(CallDataSocket(path, DataMethod::kDict, "now", absl::Seconds(10)).status.ok());
}

TEST_CASE("many concurrent clients each get their own answers") {
  TempDir dir;
  const std::string path = dir.path + "/m.sock";
  auto server = DataSocketServer::Start(path, Echo);
  REQUIRE(server.ok());
  constexpr int kThreads = 32;
  constexpr int kCalls = 200;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        const std::string body = absl::StrCat(t, "-", i, std::string(i * 37, 'p'));
        common::DataCallResult r = CallDataSocket(path, DataMethod::kChannel, body, absl::Seconds(30));
        if (!r.status.ok() || r.reply != absl::StrCat("4:", body)) ++wrong;
      }
      common::CloseThreadDataConnections();
    });
  }
  for (auto& t : threads) t.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("a call past its timeout is DeadlineExceeded, and the next call is not out of step") {
  TempDir dir;
  const std::string path = dir.path + "/t.sock";
  absl::Notification release;
  auto server = DataSocketServer::Start(path, [&](uint8_t method, uint32_t ms, absl::string_view body) {
    if (body == "slow") release.WaitForNotification();
    return Echo(method, ms, body);
  });
  REQUIRE(server.ok());
  common::DataCallResult r = CallDataSocket(path, DataMethod::kDict, "slow", absl::Milliseconds(50));
  CHECK(r.status.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK_FALSE(r.unreachable);
  release.Notify();
  r = CallDataSocket(path, DataMethod::kDict, "next", absl::Seconds(10));
  REQUIRE(r.status.ok());
  CHECK(r.reply == "3:next");  // not the late "slow" reply
}

TEST_CASE("a thread's kept connection survives its agent restarting") {
  TempDir dir;
  const std::string path = dir.path + "/r.sock";
  auto first = DataSocketServer::Start(path, Echo);
  REQUIRE(first.ok());
  REQUIRE(CallDataSocket(path, DataMethod::kDict, "1", absl::Seconds(10)).status.ok());
  first->reset();  // the agent exits: the kept connection is closed under the client
  auto second = DataSocketServer::Start(path, Echo);
  REQUIRE(second.ok());
  common::DataCallResult r = CallDataSocket(path, DataMethod::kDict, "2", absl::Seconds(10));
  REQUIRE(r.status.ok());
  CHECK(r.reply == "3:2");
}

TEST_CASE("the server's end leaves no connection thread waiting") {
  TempDir dir;
  const std::string path = dir.path + "/e.sock";
  auto server = DataSocketServer::Start(path, Echo);
  REQUIRE(server.ok());
  RawClient idle(path);
  REQUIRE(CallDataSocket(path, DataMethod::kDict, "x", absl::Seconds(10)).status.ok());
  CHECK(WaitUntil([&] { return (*server)->connections() == 2; }));
  server->reset();  // joins both connection threads (one idle, one kept)
  CHECK(idle.ReadToEof().empty());
}

}  // namespace
}  // namespace dragon::agent
