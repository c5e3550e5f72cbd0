// DataPlane::Call between two agents' data planes over loopback TCP: the
// answer or the handler's error comes back, large payloads, many at once, a
// SIGKILLed peer.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/data_plane.h"
#include "agent/data_plane_messages.h"
#include "agent/data_plane_test_util.h"

namespace dragon::agent::data_plane_test {
namespace {

// Answers "<node> got <n> bytes from <from>: <payload's first 16 bytes>", or
// fails as the payload asks ("fail:" -> ResourceExhausted).
CallHandler Echo(const std::string& node) {
  return [node](const std::string& from, std::string payload) -> absl::StatusOr<std::string> {
    if (absl::StartsWith(payload, "fail:")) {
      return absl::ResourceExhaustedError(payload.substr(5));
    }
    return absl::StrCat(node, " got ", payload.size(), " bytes from ", from, ": ",
                        payload.substr(0, 16));
  };
}

std::unique_ptr<DataPlane> StartWithHandler(ShmPool* pool, PeerDirectory* directory,
                                            const std::string& node, CallHandler handler) {
  DataPlaneOptions options = Options(node);
  options.call_handler = std::move(handler);
  absl::StatusOr<std::unique_ptr<DataPlane>> plane = DataPlane::Start(pool, directory, options);
  INFO(plane.status().ToString());
  REQUIRE(plane.ok());
  return *std::move(plane);
}

struct TwoCallingNodes {
  TwoCallingNodes() {
    UseTcpOnLoopback();
    a = StartWithHandler(pool_a.get(), &directory, "h1", Echo("h1"));
    b = StartWithHandler(pool_b.get(), &directory, "h2", Echo("h2"));
    directory.Publish("h1", *a);
    directory.Publish("h2", *b);
  }
  ~TwoCallingNodes() {
    a.reset();
    b.reset();
    pool_a.reset();
    pool_b.reset();
    CHECK(dir.Files() == 0);
  }
  ShmDir dir;
  std::unique_ptr<ShmPool> pool_a = MakePool(dir, "pool-a");
  std::unique_ptr<ShmPool> pool_b = MakePool(dir, "pool-b");
  FakeDirectory directory;
  std::unique_ptr<DataPlane> a, b;
};

TEST_CASE("call messages: encode and decode, malformed ones refused") {
  namespace m = data_plane_messages;
  m::CallRequest request{42, "node-7", absl::Milliseconds(1500), std::string("\0pay\xffload", 9)};
  absl::StatusOr<m::CallRequest> decoded = m::DecodeCallRequest(m::EncodeCallRequest(request));
  REQUIRE(decoded.ok());
  CHECK(decoded->request_id == 42);
  CHECK(decoded->node_id == "node-7");
  CHECK(decoded->timeout == absl::Milliseconds(1500));
  CHECK(decoded->payload == request.payload);
  CHECK(absl::IsInvalidArgument(m::DecodeCallRequest("short").status()));
  std::string no_node = m::EncodeCallRequest(m::CallRequest{1, "", absl::Seconds(1), "x"});
  CHECK(absl::IsInvalidArgument(m::DecodeCallRequest(no_node).status()));

  CHECK(*m::DecodeCallReply(m::EncodeCallReply(std::string("answer"))) == "answer");
  absl::StatusOr<std::string> error =
      m::DecodeCallReply(m::EncodeCallReply(absl::NotFoundError("no such key")));
  CHECK(absl::IsNotFound(error.status()));
  CHECK(error.status().message() == "no such key");
  CHECK(absl::IsInvalidArgument(m::DecodeCallReply("").status()));
  CHECK(m::kCallRequestTag != m::kPushRequestTag);
  CHECK(m::CallReplyTag(7) != m::PushReplyTag(7));
}

TEST_CASE("Call: the other agent's answer comes back; a call to this node is answered here") {
  TwoCallingNodes nodes;
  absl::StatusOr<std::string> answer = nodes.a->Call("h2", "hello", kCallTimeout);
  INFO(answer.status().ToString());
  REQUIRE(answer.ok());
  CHECK(*answer == "h2 got 5 bytes from h1: hello");
  CHECK(*nodes.b->Call("h1", "back", kCallTimeout) == "h1 got 4 bytes from h2: back");
  CHECK(*nodes.a->Call("h1", "self", kCallTimeout) == "h1 got 4 bytes from h1: self");
}

TEST_CASE("Call: the handler's error keeps its code and names the node; no handler: Unimplemented") {
  TwoCallingNodes nodes;
  absl::StatusOr<std::string> full = nodes.a->Call("h2", "fail:pool full (--shm-pool-mb)");
  CHECK(absl::IsResourceExhausted(full.status()));
  CHECK(absl::StrContains(full.status().message(), "node h2"));
  CHECK(absl::StrContains(full.status().message(), "pool full (--shm-pool-mb)"));

  auto mute = MustStart(nodes.pool_b.get(), &nodes.directory, "h3");  // Options(): no handler
  nodes.directory.Publish("h3", *mute);
  absl::StatusOr<std::string> none = nodes.a->Call("h3", "anyone?", kCallTimeout);
  INFO(none.status().ToString());
  CHECK(absl::IsUnimplemented(none.status()));
  CHECK(absl::StrContains(none.status().message(), "h3 answers no calls"));
  CHECK(absl::IsNotFound(nodes.a->Call("h9", "x").status()));
}

TEST_CASE("Call: 8 MiB payloads, and 8 threads x 50 calls at once, each answered right") {
  TwoCallingNodes nodes;
  const std::string big(8 << 20, 'z');
  CHECK(*nodes.a->Call("h2", big) == "h2 got 8388608 bytes from h1: zzzzzzzzzzzzzzzz");
  std::atomic<int> right{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        const std::string payload = absl::StrCat("t", t, "-", i);
        absl::StatusOr<std::string> answer = (t % 2 ? nodes.a : nodes.b)->Call(t % 2 ? "h2" : "h1", payload);
        const std::string expected =
            absl::StrCat(t % 2 ? "h2" : "h1", " got ", payload.size(), " bytes from ",
                         t % 2 ? "h1" : "h2", ": ", payload);
        if (answer.ok() && *answer == expected) right.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  CHECK(right.load() == 400);
}

TEST_CASE("Call: a 256 MiB request takes longer to arrive than the serving threads' poll, and arrives") {
  TwoCallingNodes nodes;
  const std::string big(256 << 20, 'q');
  absl::StatusOr<std::string> answer = nodes.a->Call("h2", big, absl::Seconds(60));
  INFO(answer.status().ToString());
  REQUIRE(answer.ok());
  CHECK(*answer == "h2 got 268435456 bytes from h1: qqqqqqqqqqqqqqqq");
}

TEST_CASE("Call to a SIGKILLed peer fails Unavailable naming it within 2 s") {
  UseTcpOnLoopback();
  ShmDir dir;
  auto pool_a = MakePool(dir, "pool-a");
  auto pool_b = MakePool(dir, "pool-b");
  DataPlaneOptions options = Options("h2");
  options.call_handler = Echo("h2");
  ForkedNode h2(pool_b.get(), options);
  FakeDirectory directory;
  directory.Set(h2.info());
  auto a = StartWithHandler(pool_a.get(), &directory, "h1", Echo("h1"));
  h2.Join(InfoOf("h1", *a));
  REQUIRE(*a->Call("h2", "alive?", kCallTimeout) == "h2 got 6 bytes from h1: alive?");

  h2.Kill();
  for (int round = 0; round < 2; ++round) {
    INFO("round " << round);
    const absl::Time started = absl::Now();
    absl::StatusOr<std::string> lost = a->Call("h2", "alive?", kCallTimeout);
    INFO(lost.status().ToString());
    CHECK(absl::IsUnavailable(lost.status()));
    CHECK(absl::StrContains(lost.status().message(), "node h2"));
    CHECK(absl::Now() - started < absl::Seconds(2));
  }
  a.reset();
  pool_a.reset();
  pool_b.reset();
  CHECK(dir.Files() == 0);
}

}  // namespace
}  // namespace dragon::agent::data_plane_test
