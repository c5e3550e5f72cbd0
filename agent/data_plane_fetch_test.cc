// A Pull's transfer (data_plane_fetch.cc): its messages, what the owner of
// the block refuses, and the owner's side when the node pulling from it
// dies. Over TCP on loopback, as data_plane_test.cc (whose header says how
// the nodes and the forked child are set up).
#include <signal.h>
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
#include "absl/time/time.h"
#include "agent/data_plane.h"
#include "agent/data_plane_messages.h"
#include "agent/data_plane_test_util.h"
#include "common/shm_pool.h"

namespace dragon::agent::data_plane_test {
namespace {

namespace m = data_plane_messages;

TEST_CASE("fetch messages: encode and decode, malformed ones refused") {
  m::FetchRequest request;
  request.request_id = 91;
  request.node_id = "client-42";
  request.ref = BlockRef{8192, 16384, 5};
  request.size = 10000;
  request.timeout = absl::Milliseconds(1500);
  const std::string encoded = m::EncodeFetchRequest(request);
  absl::StatusOr<m::FetchRequest> decoded = m::DecodeFetchRequest(encoded);
  REQUIRE(decoded.ok());
  CHECK(decoded->request_id == 91);
  CHECK(decoded->node_id == "client-42");
  CHECK(decoded->ref == request.ref);
  CHECK(decoded->size == 10000);
  CHECK(decoded->timeout == absl::Milliseconds(1500));
  CHECK(absl::IsInvalidArgument(m::DecodeFetchRequest(encoded.substr(0, 30)).status()));
  std::string other_version = encoded;
  other_version[0] = 4;
  CHECK(absl::StrContains(m::DecodeFetchRequest(other_version).status().message(), "version 4"));

  const absl::string_view block_bytes("bytes\0of a block", 16);
  const std::string with_data =
      m::EncodeFetchReply(absl::StatusOr<absl::string_view>(block_bytes));
  absl::StatusOr<absl::string_view> inline_data = m::DecodeFetchReply(with_data);
  REQUIRE(inline_data.ok());
  CHECK(*inline_data == block_bytes);
  const std::string data_follows = m::EncodeFetchReply(absl::string_view());
  absl::StatusOr<absl::string_view> follows = m::DecodeFetchReply(data_follows);
  REQUIRE(follows.ok());
  CHECK(follows->empty());
  const std::string refusal = m::EncodeFetchReply(absl::NotFoundError("no such block"));
  absl::StatusOr<absl::string_view> refused = m::DecodeFetchReply(refusal);
  CHECK(refused.status() == absl::NotFoundError("no such block"));
  CHECK(absl::IsInvalidArgument(m::DecodeFetchReply("").status()));
  CHECK(absl::IsInvalidArgument(m::DecodeFetchReply(std::string("\x01\x63", 2)).status()));

  // Three kinds of their own, the request id below.
  CHECK(m::FetchReplyTag(7) == ((uint64_t{6} << 56) | 7));
  CHECK(m::FetchDataTag(7) == ((uint64_t{7} << 56) | 7));
  CHECK(m::kFetchRequestTag == (uint64_t{5} << 56));
}

TEST_CASE("Pull of a block its owner has freed: refused by the owner, naming the block and node") {
  TwoNodes nodes;
  for (uint64_t size : {4 * kKiB, 2 * kMiB}) {  // the answer carries small data, large follows it
    INFO("size " << size);
    const BlockRef source = WriteBlock(*nodes.pool_b, size, 3);
    REQUIRE(nodes.pool_b->Free(source).ok());
    absl::StatusOr<BlockRef> pulled = nodes.a->Pull("h2", source, size, 0, kCallTimeout);
    INFO(pulled.status().ToString());
    REQUIRE_FALSE(pulled.ok());
    CHECK_FALSE(absl::IsUnavailable(pulled.status()));  // a refusal, not a lost peer
    CHECK(absl::StrContains(pulled.status().message(), "node h2"));
    CHECK(absl::StrContains(pulled.status().message(),
                            absl::StrCat("block (offset ", source.offset)));
    CHECK(BlocksInUse(*nodes.pool_a) == 0);
  }
  // The connection is still good.
  const BlockRef live = WriteBlock(*nodes.pool_b, 2 * kMiB, 4);
  absl::StatusOr<BlockRef> pulled = nodes.a->Pull("h2", live, 2 * kMiB, 0, kCallTimeout);
  REQUIRE(pulled.ok());
  CHECK(Holds(*nodes.pool_a, *pulled, 2 * kMiB, 4));
  REQUIRE(nodes.pool_a->Free(*pulled).ok());
  REQUIRE(nodes.pool_b->Free(live).ok());
}

TEST_CASE("a part of a block: the first bytes only, small and large") {
  TwoNodes nodes;
  const BlockRef source = WriteBlock(*nodes.pool_b, 4 * kMiB, 6);
  for (uint64_t size : {uint64_t{1}, m::kInlineFetchBytes, m::kInlineFetchBytes + 1, 3 * kMiB}) {
    INFO("size " << size);
    absl::StatusOr<BlockRef> pulled = nodes.a->Pull("h2", source, size, 0, kCallTimeout);
    INFO(pulled.status().ToString());
    REQUIRE(pulled.ok());
    CHECK(Holds(*nodes.pool_a, *pulled, size, 6));
    REQUIRE(nodes.pool_a->Free(*pulled).ok());
  }
  REQUIRE(nodes.pool_b->Free(source).ok());
}

// What the owner of a block sees when the node pulling it is SIGKILLed with
// transfers in flight: it goes on serving everyone else, and its blocks stay
// as they were. (With the pulls as UCX Gets over TCP, UCX 1.13 could abort
// the owner's whole process here; the transfers are sends now.)
TEST_CASE("the node pulling from us is SIGKILLed mid-transfer: we go on serving the others") {
  UseTcpOnLoopback();
  ShmDir dir;
  auto pool_a = MakePool(dir, "pool-a");  // ours, as h1
  auto pool_b = MakePool(dir, "pool-b");  // the child's, as h2
  auto pool_c = MakePool(dir, "pool-c");  // a third node's, in this process, as h3
  const BlockRef large = WriteBlock(*pool_a, 16 * kMiB, 31);
  const BlockRef small = WriteBlock(*pool_a, 2 * kKiB, 32);
  // h2 pulls both blocks from us in 4 threads, over and over, until killed.
  ShmPool* child_pool = pool_b.get();
  ForkedNode h2(
      pool_b.get(), Options("h2"),
      [large, small, child_pool](DataPlane& plane) {
        for (uint64_t round = 0;; ++round) {
          const BlockRef& ref = round % 3 == 0 ? small : large;
          absl::StatusOr<BlockRef> got = plane.Pull("h1", ref, ref.length, 0, kCallTimeout);
          if (got.ok()) (void)!child_pool->Free(*got).ok();
        }
      },
      /*work_threads=*/4);
  FakeDirectory directory;
  directory.Set(h2.info());
  auto a = MustStart(pool_a.get(), &directory, "h1");
  auto c = MustStart(pool_c.get(), &directory, "h3");
  directory.Publish("h1", *a);
  directory.Publish("h3", *c);
  h2.Join(InfoOf("h1", *a));

  // Let the pulls run (a block of pool_b in use: one being filled), then
  // kill h2 in the middle of them.
  const absl::Time busy_by = absl::Now() + absl::Seconds(10);
  while (BlocksInUse(*pool_b) == 0 && absl::Now() < busy_by) absl::SleepFor(absl::Milliseconds(1));
  REQUIRE(BlocksInUse(*pool_b) > 0);
  absl::SleepFor(absl::Milliseconds(300));
  h2.Kill();

  // We are alive, and every later transfer with h3 works, both ways, while
  // whatever was in flight to h2 fails on our fetch threads.
  const pid_t owner = getpid();
  for (int i = 0; i < 20; ++i) {
    INFO("round " << i);
    const BlockRef& source = i % 2 ? large : small;
    absl::StatusOr<BlockRef> to_c = c->Pull("h1", source, source.length, owner, kCallTimeout);
    INFO(to_c.status().ToString());
    REQUIRE(to_c.ok());
    CHECK(Holds(*pool_c, *to_c, source.length, i % 2 ? 31 : 32));
    absl::StatusOr<BlockRef> back = a->Pull("h3", *to_c, 2 * kKiB, owner, kCallTimeout);
    REQUIRE(back.ok());
    REQUIRE(pool_a->Free(*back).ok());
    REQUIRE(pool_c->Free(*to_c).ok());
  }
  // A pull from the dead node fails saying so, and quickly.
  const absl::Time started = absl::Now();
  absl::StatusOr<BlockRef> lost = a->Pull("h2", large, 4 * kKiB, owner, kCallTimeout);
  INFO(lost.status().ToString());
  CHECK(absl::IsUnavailable(lost.status()));
  CHECK(absl::StrContains(lost.status().message(), "node h2"));
  CHECK(absl::Now() - started < absl::Seconds(2));
  // Our pool holds what it held: serving allocates nothing.
  CHECK(BlocksInUse(*pool_a) == 2);
  CHECK(BlocksInUse(*pool_c) == 0);
  a.reset();
  c.reset();
  pool_a.reset();
  pool_b.reset();  // the killed child's copies go with it
  pool_c.reset();
  CHECK(dir.Files() == 0);
}

}  // namespace
}  // namespace dragon::agent::data_plane_test
