// DataPlane between pools of one host, over TCP on loopback.
//
// Every test sets UCX_TLS=tcp,self before it makes a data plane, so the
// bytes go through TCP sockets as between two hosts (UCX would otherwise
// move them through shared memory, and a killed peer would look different).
// Pools live in a private directory under /dev/shm, which must be empty when
// everything is destroyed. A "node" is a DataPlane over its own pool; two of
// them in this process, or one in a forked child that is SIGKILLed. Tests
// that fork do so before they make any data plane (UCX is not fork-safe once
// its threads run); the child has an alarm and the parent kills it on a
// hang. Every call has its own timeout; Bazel's bounds the whole test.
#include "agent/data_plane.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/data_plane_messages.h"
#include "agent/data_plane_test_util.h"
#include "common/shm_pool.h"

namespace dragon::agent::data_plane_test {
namespace {

TEST_CASE("push messages: encode and decode, malformed ones refused") {
  namespace m = data_plane_messages;
  m::PushRequest request;
  request.request_id = 77;
  request.node_id = "node-7.example";
  request.ref = BlockRef{4096, 8192, 3};
  request.size = 5000;
  request.owner = 4242;
  request.timeout = absl::Milliseconds(2500);
  absl::StatusOr<m::PushRequest> decoded = m::DecodePushRequest(m::EncodePushRequest(request));
  REQUIRE(decoded.ok());
  CHECK(decoded->request_id == 77);
  CHECK(decoded->node_id == "node-7.example");
  CHECK(decoded->ref == request.ref);
  CHECK(decoded->size == 5000);
  CHECK(decoded->owner == 4242);
  CHECK(decoded->timeout == absl::Milliseconds(2500));

  std::string encoded = m::EncodePushRequest(request);
  CHECK(absl::IsInvalidArgument(m::DecodePushRequest(encoded.substr(0, 20)).status()));
  encoded[0] = 9;
  CHECK(absl::StrContains(m::DecodePushRequest(encoded).status().message(), "version 9"));

  absl::StatusOr<BlockRef> ok = m::DecodePushReply(m::EncodePushReply(BlockRef{1, 2, 3}));
  REQUIRE(ok.ok());
  CHECK(*ok == BlockRef{1, 2, 3});
  absl::StatusOr<BlockRef> error =
      m::DecodePushReply(m::EncodePushReply(absl::ResourceExhaustedError("pool full")));
  CHECK(error.status() == absl::ResourceExhaustedError("pool full"));
  CHECK(absl::IsInvalidArgument(m::DecodePushReply("").status()));
  CHECK(absl::IsInvalidArgument(m::DecodePushReply(std::string("\x01\x00\x05", 3)).status()));

  // Kind in the top byte, request id below.
  CHECK(m::PushReplyTag(5) == ((uint64_t{2} << 56) | 5));
  CHECK(m::PushReplyTag(5) != m::kPushRequestTag);
  CHECK(m::NextRequestId() != m::NextRequestId());
}

TEST_CASE("the pool's data region holds every block at its offset") {
  ShmDir dir;
  std::unique_ptr<ShmPool> pool = MakePool(dir, "region", 4 * kMiB);
  CHECK(pool->data_region().size() == pool->capacity_bytes());
  BlockRef ref = WriteBlock(*pool, 64 * kKiB, 1);
  CHECK(pool->Resolve(ref)->data() == pool->data_region().data() + ref.offset);
  REQUIRE(pool->Free(ref).ok());
  pool.reset();
  CHECK(dir.Files() == 0);
}

TEST_CASE("Pull copies 1 B, 2 MiB and 64 MiB byte for byte into a block of the given owner") {
  TwoNodes nodes;
  const pid_t owner = getppid();  // alive, and not us
  uint8_t seed = 10;
  for (uint64_t size : {uint64_t{1}, 2 * kMiB, 64 * kMiB}) {
    INFO("size " << size);
    const BlockRef source = WriteBlock(*nodes.pool_b, size, ++seed);
    absl::StatusOr<BlockRef> pulled = nodes.a->Pull("h2", source, size, owner, kCallTimeout);
    INFO(pulled.status().ToString());
    REQUIRE(pulled.ok());
    CHECK(Holds(*nodes.pool_a, *pulled, size, seed));
    CHECK(*nodes.pool_a->Owners() == std::vector<pid_t>{owner});
    ExpectOwnedAndFree(*nodes.pool_a, *pulled, owner);
    // The source is left as it was.
    CHECK(Holds(*nodes.pool_b, source, size, seed));
    REQUIRE(nodes.pool_b->Free(source).ok());
  }
  // Within the node: a copy in the same pool.
  const BlockRef local = WriteBlock(*nodes.pool_a, 3 * kMiB, 99);
  absl::StatusOr<BlockRef> copied = nodes.a->Pull("h1", local, 3 * kMiB, owner, kCallTimeout);
  REQUIRE(copied.ok());
  CHECK(*copied != local);
  CHECK(Holds(*nodes.pool_a, *copied, 3 * kMiB, 99));
  ExpectOwnedAndFree(*nodes.pool_a, *copied, owner);
  REQUIRE(nodes.pool_a->Free(local).ok());
  CHECK(BlocksInUse(*nodes.pool_a) == 0);
  CHECK(BlocksInUse(*nodes.pool_b) == 0);
}

TEST_CASE("Push has the other agent pull 1 B, 2 MiB and 64 MiB into its pool for the owner") {
  TwoNodes nodes;
  const pid_t owner = getppid();
  uint8_t seed = 40;
  for (uint64_t size : {uint64_t{1}, 2 * kMiB, 64 * kMiB}) {
    INFO("size " << size);
    const BlockRef source = WriteBlock(*nodes.pool_a, size, ++seed);
    absl::StatusOr<BlockRef> pushed = nodes.a->Push("h2", source, size, owner, kCallTimeout);
    INFO(pushed.status().ToString());
    REQUIRE(pushed.ok());
    CHECK(Holds(*nodes.pool_b, *pushed, size, seed));
    CHECK(*nodes.pool_b->Owners() == std::vector<pid_t>{owner});
    ExpectOwnedAndFree(*nodes.pool_b, *pushed, owner);
    CHECK(Holds(*nodes.pool_a, source, size, seed));
    REQUIRE(nodes.pool_a->Free(source).ok());
  }
  // Both ways at once: h2 pushes to h1 while h1 pushes to h2.
  const BlockRef from_a = WriteBlock(*nodes.pool_a, 1 * kMiB, 7);
  const BlockRef from_b = WriteBlock(*nodes.pool_b, 1 * kMiB, 8);
  absl::StatusOr<BlockRef> into_a;
  std::thread other([&] { into_a = nodes.b->Push("h1", from_b, kMiB, owner, kCallTimeout); });
  absl::StatusOr<BlockRef> into_b = nodes.a->Push("h2", from_a, kMiB, owner, kCallTimeout);
  other.join();
  REQUIRE(into_a.ok());
  REQUIRE(into_b.ok());
  CHECK(Holds(*nodes.pool_a, *into_a, kMiB, 8));
  CHECK(Holds(*nodes.pool_b, *into_b, kMiB, 7));
  for (ShmPool* pool : {nodes.pool_a.get(), nodes.pool_b.get()}) {
    REQUIRE(pool->ReclaimOwner(owner).ok());
  }
  REQUIRE(nodes.pool_a->Free(from_a).ok());
  REQUIRE(nodes.pool_b->Free(from_b).ok());
  CHECK(BlocksInUse(*nodes.pool_a) == 0);
  CHECK(BlocksInUse(*nodes.pool_b) == 0);
}

TEST_CASE("a size larger than the block, or 0, is refused naming both") {
  TwoNodes nodes;
  const BlockRef source = WriteBlock(*nodes.pool_b, 4 * kKiB, 1);
  for (bool push : {false, true}) {
    DataPlane& plane = push ? *nodes.b : *nodes.a;
    const std::string node = push ? "h1" : "h2";
    absl::StatusOr<BlockRef> large =
        push ? plane.Push(node, source, 8 * kKiB, 0, kCallTimeout)
             : plane.Pull(node, source, 8 * kKiB, 0, kCallTimeout);
    REQUIRE(absl::IsInvalidArgument(large.status()));
    CHECK(absl::StrContains(large.status().message(), "8192 bytes"));
    CHECK(absl::StrContains(large.status().message(), "only 4096 bytes"));
    absl::StatusOr<BlockRef> empty = push ? plane.Push(node, source, 0, 0, kCallTimeout)
                                          : plane.Pull(node, source, 0, 0, kCallTimeout);
    CHECK(absl::IsInvalidArgument(empty.status()));
  }
  REQUIRE(nodes.pool_b->Free(source).ok());
  CHECK(BlocksInUse(*nodes.pool_a) == 0);
  CHECK(BlocksInUse(*nodes.pool_b) == 0);
}

TEST_CASE("a reference past the end of the other node's pool is refused before anything is read") {
  TwoNodes nodes(/*start=*/false);
  nodes.directory.SetPoolBytes(nodes.pool_b->capacity_bytes());
  nodes.StartPlanes();
  BlockRef forged;
  forged.offset = nodes.pool_b->capacity_bytes() - 4 * kKiB;
  forged.length = 64 * kKiB;
  absl::StatusOr<BlockRef> pulled = nodes.a->Pull("h2", forged, 64 * kKiB, 0, kCallTimeout);
  INFO(pulled.status().ToString());
  REQUIRE(absl::IsInvalidArgument(pulled.status()));
  CHECK(absl::StrContains(pulled.status().message(), "past the end of its pool"));
  forged.offset = ~uint64_t{0} - 100;  // an offset + size that would wrap around
  CHECK(absl::IsInvalidArgument(nodes.a->Pull("h2", forged, 64 * kKiB, 0, kCallTimeout).status()));
  CHECK(BlocksInUse(*nodes.pool_a) == 0);
  // A reference inside the pool still works.
  const BlockRef source = WriteBlock(*nodes.pool_b, 64 * kKiB, 9);
  absl::StatusOr<BlockRef> good = nodes.a->Pull("h2", source, 64 * kKiB, 0, kCallTimeout);
  REQUIRE(good.ok());
  CHECK(Holds(*nodes.pool_a, *good, 64 * kKiB, 9));
  REQUIRE(nodes.pool_a->Free(*good).ok());
  REQUIRE(nodes.pool_b->Free(source).ok());
}

TEST_CASE("an unknown node: the directory's NotFound passes through") {
  TwoNodes nodes;
  const BlockRef source = WriteBlock(*nodes.pool_a, 4 * kKiB, 1);
  absl::StatusOr<BlockRef> pulled = nodes.a->Pull("h9", source, 4 * kKiB, 0, kCallTimeout);
  CHECK(pulled.status() == absl::NotFoundError("no node h9 with a data plane"));
  absl::StatusOr<BlockRef> pushed = nodes.a->Push("h9", source, 4 * kKiB, 0, kCallTimeout);
  CHECK(pushed.status() == absl::NotFoundError("no node h9 with a data plane"));
  REQUIRE(nodes.pool_a->Free(source).ok());
  CHECK(BlocksInUse(*nodes.pool_a) == 0);
}

TEST_CASE("a full destination pool: ResourceExhausted with the pool's message, nothing leaked") {
  TwoNodes nodes;
  // Pull into a full pool_a.
  const BlockRef source_b = WriteBlock(*nodes.pool_b, 2 * kMiB, 1);
  absl::StatusOr<BlockRef> filler_a = nodes.pool_a->Allocate(nodes.pool_a->capacity_bytes());
  REQUIRE(filler_a.ok());
  absl::StatusOr<BlockRef> pulled = nodes.a->Pull("h2", source_b, 2 * kMiB, 0, kCallTimeout);
  REQUIRE(absl::IsResourceExhausted(pulled.status()));
  CHECK(absl::StrContains(pulled.status().message(), "cannot allocate 2097152 bytes"));
  CHECK(absl::StrContains(pulled.status().message(), "--shm-pool-mb"));
  CHECK(BlocksInUse(*nodes.pool_a) == 1);
  CHECK(BlocksInUse(*nodes.pool_b) == 1);
  REQUIRE(nodes.pool_a->Free(*filler_a).ok());
  REQUIRE(nodes.pool_b->Free(source_b).ok());

  // Push into a full pool_b: its agent's error, naming that node.
  const BlockRef source_a = WriteBlock(*nodes.pool_a, 2 * kMiB, 2);
  absl::StatusOr<BlockRef> filler_b = nodes.pool_b->Allocate(nodes.pool_b->capacity_bytes());
  REQUIRE(filler_b.ok());
  absl::StatusOr<BlockRef> pushed = nodes.a->Push("h2", source_a, 2 * kMiB, 0, kCallTimeout);
  INFO(pushed.status().ToString());
  REQUIRE(absl::IsResourceExhausted(pushed.status()));
  CHECK(absl::StartsWith(pushed.status().message(), "node h2: "));
  CHECK(absl::StrContains(pushed.status().message(), "cannot allocate 2097152 bytes"));
  CHECK(absl::StrContains(pushed.status().message(), nodes.pool_b->path()));
  CHECK(absl::StrContains(pushed.status().message(), "--shm-pool-mb"));
  CHECK(BlocksInUse(*nodes.pool_a) == 1);
  CHECK(BlocksInUse(*nodes.pool_b) == 1);
  REQUIRE(nodes.pool_b->Free(*filler_b).ok());
  REQUIRE(nodes.pool_a->Free(source_a).ok());
}

TEST_CASE("Push to an owner that is not alive there: FailedPrecondition naming the pid") {
  TwoNodes nodes(/*start=*/false);
  const pid_t dead = fork();  // before any UCX thread of this test runs
  REQUIRE(dead >= 0);
  if (dead == 0) _exit(0);
  REQUIRE(waitpid(dead, nullptr, 0) == dead);
  nodes.StartPlanes();
  const BlockRef source = WriteBlock(*nodes.pool_a, 64 * kKiB, 1);
  absl::StatusOr<BlockRef> pushed = nodes.a->Push("h2", source, 64 * kKiB, dead, kCallTimeout);
  INFO(pushed.status().ToString());
  REQUIRE(absl::IsFailedPrecondition(pushed.status()));
  CHECK(absl::StartsWith(pushed.status().message(), "node h2: "));
  CHECK(absl::StrContains(pushed.status().message(), absl::StrCat("owner process ", dead)));
  // Within the node too.
  CHECK(absl::IsFailedPrecondition(
      nodes.a->Push("h1", source, 64 * kKiB, dead, kCallTimeout).status()));
  REQUIRE(nodes.pool_a->Free(source).ok());
  CHECK(BlocksInUse(*nodes.pool_a) == 0);
  CHECK(BlocksInUse(*nodes.pool_b) == 0);
}

TEST_CASE("64 concurrent pulls from 8 threads, each byte for byte") {
  TwoNodes nodes;
  constexpr int kThreads = 8;
  constexpr int kPullsEach = 8;
  constexpr uint64_t kSize = 256 * kKiB + 17;
  std::vector<BlockRef> sources;
  for (int t = 0; t < kThreads; ++t) {
    sources.push_back(WriteBlock(*nodes.pool_b, kSize, static_cast<uint8_t>(t)));
  }
  std::atomic<int> good{0};
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPullsEach; ++i) {
        absl::StatusOr<BlockRef> pulled = nodes.a->Pull("h2", sources[t], kSize, 0, kCallTimeout);
        if (!pulled.ok()) {
          failures[t] = pulled.status().ToString();
          return;
        }
        if (Holds(*nodes.pool_a, *pulled, kSize, static_cast<uint8_t>(t))) good++;
        if (!nodes.pool_a->Free(*pulled).ok()) failures[t] = "free failed";
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const std::string& failure : failures) CHECK(failure == "");
  CHECK(good == kThreads * kPullsEach);
  for (const BlockRef& source : sources) REQUIRE(nodes.pool_b->Free(source).ok());
  CHECK(BlocksInUse(*nodes.pool_a) == 0);
}

TEST_CASE("a restarted peer (same node, new address in the directory) is reached on the next call") {
  TwoNodes nodes;
  const BlockRef source = WriteBlock(*nodes.pool_b, 1 * kMiB, 5);
  absl::StatusOr<BlockRef> first = nodes.a->Pull("h2", source, kMiB, 0, kCallTimeout);
  REQUIRE(first.ok());
  REQUIRE(nodes.pool_a->Free(*first).ok());

  // h2's agent restarts over the same pool (as ShmPool::Adopt gives it).
  const std::string old_address = nodes.b->ucx_address();
  nodes.b.reset();
  nodes.b = MustStart(nodes.pool_b.get(), &nodes.directory, "h2");
  REQUIRE(nodes.b->ucx_address() != old_address);
  nodes.directory.Publish("h2", *nodes.b);
  const int refreshes = nodes.directory.refreshes();

  absl::StatusOr<BlockRef> after = nodes.a->Pull("h2", source, kMiB, 0, kCallTimeout);
  INFO(after.status().ToString());
  REQUIRE(after.ok());
  CHECK(Holds(*nodes.pool_a, *after, kMiB, 5));
  CHECK(nodes.directory.refreshes() > refreshes);
  REQUIRE(nodes.pool_a->Free(*after).ok());

  // And Push, after another restart.
  nodes.b.reset();
  nodes.b = MustStart(nodes.pool_b.get(), &nodes.directory, "h2");
  nodes.directory.Publish("h2", *nodes.b);
  const BlockRef mine = WriteBlock(*nodes.pool_a, 1 * kMiB, 6);
  absl::StatusOr<BlockRef> pushed = nodes.a->Push("h2", mine, kMiB, 0, kCallTimeout);
  INFO(pushed.status().ToString());
  REQUIRE(pushed.ok());
  CHECK(Holds(*nodes.pool_b, *pushed, kMiB, 6));
  REQUIRE(nodes.pool_b->Free(*pushed).ok());
  REQUIRE(nodes.pool_a->Free(mine).ok());
  REQUIRE(nodes.pool_b->Free(source).ok());
  CHECK(BlocksInUse(*nodes.pool_a) == 0);
  CHECK(BlocksInUse(*nodes.pool_b) == 0);
}

TEST_CASE("a peer SIGKILLed: Pull and Push fail Unavailable naming it within 2 s, nothing leaked") {
  UseTcpOnLoopback();
  ShmDir dir;
  auto pool_a = MakePool(dir, "pool-a");
  auto pool_b = MakePool(dir, "pool-b");  // the child's node's; we keep it to look inside
  const BlockRef source_b = WriteBlock(*pool_b, 2 * kMiB, 21);
  const BlockRef source_a = WriteBlock(*pool_a, 2 * kMiB, 22);
  ForkedNode h2(pool_b.get(), Options("h2"));  // node h2: serves until it is killed
  FakeDirectory directory;
  directory.Set(h2.info());
  auto a = MustStart(pool_a.get(), &directory, "h1");
  h2.Join(InfoOf("h1", *a));

  // Alive: both ways work.
  const pid_t owner = getpid();
  absl::StatusOr<BlockRef> pulled = a->Pull("h2", source_b, 2 * kMiB, owner, kCallTimeout);
  REQUIRE(pulled.ok());
  CHECK(Holds(*pool_a, *pulled, 2 * kMiB, 21));
  REQUIRE(pool_a->Free(*pulled).ok());
  absl::StatusOr<BlockRef> pushed = a->Push("h2", source_a, 2 * kMiB, owner, kCallTimeout);
  INFO(pushed.status().ToString());
  REQUIRE(pushed.ok());
  CHECK(Holds(*pool_b, *pushed, 2 * kMiB, 22));
  REQUIRE(pool_b->Free(*pushed).ok());

  h2.Kill();
  for (int round = 0; round < 2; ++round) {  // the lost connection, then a new one to nobody
    INFO("round " << round);
    absl::Time started = absl::Now();
    absl::StatusOr<BlockRef> lost_pull = a->Pull("h2", source_b, 2 * kMiB, owner, kCallTimeout);
    INFO(lost_pull.status().ToString());
    CHECK(absl::IsUnavailable(lost_pull.status()));
    CHECK(absl::StrContains(lost_pull.status().message(), "node h2"));
    CHECK(absl::Now() - started < absl::Seconds(2));

    started = absl::Now();
    absl::StatusOr<BlockRef> lost_push = a->Push("h2", source_a, 2 * kMiB, owner, kCallTimeout);
    INFO(lost_push.status().ToString());
    CHECK(absl::IsUnavailable(lost_push.status()));
    CHECK(absl::StrContains(lost_push.status().message(), "node h2"));
    CHECK(absl::Now() - started < absl::Seconds(2));
  }
  CHECK(BlocksInUse(*pool_a) == 1);  // source_a
  CHECK(BlocksInUse(*pool_b) == 1);  // source_b
  a.reset();
  pool_a.reset();
  pool_b.reset();
  CHECK(dir.Files() == 0);
}

TEST_CASE("too short a timeout: DeadlineExceeded, nothing left in either pool, next calls work") {
  TwoNodes nodes;
  const BlockRef in_b = WriteBlock(*nodes.pool_b, 64 * kMiB, 1);
  const BlockRef in_a = WriteBlock(*nodes.pool_a, 64 * kMiB, 2);
  // 64 MiB take ~40 ms over loopback TCP.
  absl::StatusOr<BlockRef> pulled = nodes.a->Pull("h2", in_b, 64 * kMiB, 0, absl::Milliseconds(2));
  INFO(pulled.status().ToString());
  CHECK(absl::IsDeadlineExceeded(pulled.status()));
  CHECK(absl::StrContains(pulled.status().message(), "node h2"));
  CHECK(BlocksInUse(*nodes.pool_a) == 1);
  // Whether the deadline passed before the Get or closed its connection
  // during it, the next call works.
  absl::StatusOr<BlockRef> again = nodes.a->Pull("h2", in_b, 64 * kMiB, 0, kCallTimeout);
  INFO(again.status().ToString());
  REQUIRE(again.ok());
  CHECK(Holds(*nodes.pool_a, *again, 64 * kMiB, 1));
  REQUIRE(nodes.pool_a->Free(*again).ok());

  absl::StatusOr<BlockRef> pushed = nodes.a->Push("h2", in_a, 64 * kMiB, 0, absl::Milliseconds(2));
  INFO(pushed.status().ToString());
  CHECK(absl::IsDeadlineExceeded(pushed.status()));
  // h2 may still be serving it: once its threads are joined, whatever it
  // pulled for the request must be gone.
  nodes.b.reset();
  CHECK(BlocksInUse(*nodes.pool_b) == 1);
  nodes.b = MustStart(nodes.pool_b.get(), &nodes.directory, "h2");
  nodes.directory.Publish("h2", *nodes.b);
  absl::StatusOr<BlockRef> pushed_again = nodes.a->Push("h2", in_a, 64 * kMiB, 0, kCallTimeout);
  INFO(pushed_again.status().ToString());
  REQUIRE(pushed_again.ok());
  CHECK(Holds(*nodes.pool_b, *pushed_again, 64 * kMiB, 2));
  REQUIRE(nodes.pool_b->Free(*pushed_again).ok());
  REQUIRE(nodes.pool_a->Free(in_a).ok());
  REQUIRE(nodes.pool_b->Free(in_b).ok());
  CHECK(BlocksInUse(*nodes.pool_a) == 0);
  CHECK(BlocksInUse(*nodes.pool_b) == 0);
}

// Not a check: numbers for the report, in the test's log.
TEST_CASE("timing: 64 MiB Pull and Push, 4 KiB Pull round trip (loopback TCP)") {
  TwoNodes nodes;
  const BlockRef large_b = WriteBlock(*nodes.pool_b, 64 * kMiB, 1);
  const BlockRef large_a = WriteBlock(*nodes.pool_a, 64 * kMiB, 2);
  const BlockRef small_b = WriteBlock(*nodes.pool_b, 4 * kKiB, 3);
  auto best_of = [](int rounds, const std::function<BlockRef()>& once) {
    absl::Duration best = absl::InfiniteDuration();
    for (int i = 0; i < rounds; ++i) {
      const absl::Time start = absl::Now();
      once();
      best = std::min(best, absl::Now() - start);
    }
    return best;
  };
  auto pull_large = [&] {
    absl::StatusOr<BlockRef> r = nodes.a->Pull("h2", large_b, 64 * kMiB, 0, kCallTimeout);
    REQUIRE(r.ok());
    REQUIRE(nodes.pool_a->Free(*r).ok());
    return *r;
  };
  auto push_large = [&] {
    absl::StatusOr<BlockRef> r = nodes.a->Push("h2", large_a, 64 * kMiB, 0, kCallTimeout);
    REQUIRE(r.ok());
    REQUIRE(nodes.pool_b->Free(*r).ok());
    return *r;
  };
  const absl::Duration pull = best_of(3, pull_large);
  const absl::Duration push = best_of(3, push_large);
  std::vector<double> round_trips_us;
  for (int i = 0; i < 500; ++i) {
    const absl::Time start = absl::Now();
    absl::StatusOr<BlockRef> r = nodes.a->Pull("h2", small_b, 4 * kKiB, 0, kCallTimeout);
    const absl::Duration took = absl::Now() - start;
    REQUIRE(r.ok());
    REQUIRE(nodes.pool_a->Free(*r).ok());
    if (i >= 20) round_trips_us.push_back(absl::ToDoubleMicroseconds(took));  // warm
  }
  std::sort(round_trips_us.begin(), round_trips_us.end());
  const double mb = 64.0 * kMiB / 1e6;
  std::printf(
      "data plane timing (best of 3): 64 MiB Pull %.0f MB/s (%s), 64 MiB Push %.0f MB/s (%s); "
      "4 KiB Pull round trip p50 %.1f us, p99 %.1f us\n",
      mb / absl::ToDoubleSeconds(pull), absl::FormatDuration(pull).c_str(),
      mb / absl::ToDoubleSeconds(push), absl::FormatDuration(push).c_str(),
      round_trips_us[round_trips_us.size() / 2], round_trips_us[round_trips_us.size() * 99 / 100]);
  REQUIRE(nodes.pool_b->Free(large_b).ok());
  REQUIRE(nodes.pool_a->Free(large_a).ok());
  REQUIRE(nodes.pool_b->Free(small_b).ok());
}

}  // namespace
}  // namespace dragon::agent::data_plane_test
