// AgentChannels on two agents' data planes (loopback TCP), dispatched with
// the Dictionary's calls as dragon-agent does: a channel of h1's pool used
// through h2's agent (send, receive, would-block, end of stream), a Pipe's
// other end dead at home, PEER_ALIVE, a home node gone; a Barrier of h1's
// pool with parties on h2 (one arrival per party however often its slice is
// retried, rounds, timeout, abort and reset, a party that stops calling).
#include "agent/agent_channels.h"

#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "agent/agent_data_plane.h"
#include "agent/agent_dictionary.h"
#include "agent/data_plane.h"
#include "agent/data_plane_test_util.h"
#include "common/shm_barrier.h"
#include "common/shm_channel.h"

namespace dragon::agent::data_plane_test {
namespace {

using common::ShmBarrier;
using common::ShmChannel;

v1::ChannelRequest Request(const std::string& node, v1::ChannelRequest::Op op, const BlockRef& ref) {
  v1::ChannelRequest r;
  r.set_node_id(node);
  r.set_ref(ref.Encode());
  r.set_op(op);
  r.set_wait_ms(50);
  r.set_timeout_ms(10000);
  return r;
}

struct TwoChannelNodes {
  // `h1_clock`: h1's AgentBarriers clock (null: the real one).
  explicit TwoChannelNodes(AgentBarriers::Clock h1_clock = nullptr) {
    UseTcpOnLoopback();
    auto list = [] { return absl::StatusOr<std::vector<std::string>>({"h1", "h2"}); };
    dict_a = std::make_unique<AgentDictionary>("h1", pool_a.get(), list);
    dict_b = std::make_unique<AgentDictionary>("h2", pool_b.get(), list);
    chan_a = std::make_unique<AgentChannels>("h1", pool_a.get(), std::move(h1_clock));
    chan_b = std::make_unique<AgentChannels>("h2", pool_b.get());
    DataPlaneOptions oa = Options("h1"), ob = Options("h2");
    oa.call_handler = DispatchCalls({{AgentDictionary::kCallService, dict_a->Handler()},
                                     {AgentChannels::kCallService, chan_a->Handler()}});
    ob.call_handler = DispatchCalls({{AgentDictionary::kCallService, dict_b->Handler()},
                                     {AgentChannels::kCallService, chan_b->Handler()}});
    a = *DataPlane::Start(pool_a.get(), &directory, oa);
    b = *DataPlane::Start(pool_b.get(), &directory, ob);
    directory.Publish("h1", *a);
    directory.Publish("h2", *b);
    dict_a->SetPlane(a.get());
    dict_b->SetPlane(b.get());
    chan_a->SetPlane(a.get());
    chan_b->SetPlane(b.get());
  }
  ~TwoChannelNodes() {
    a.reset();
    b.reset();
    dict_a.reset();
    dict_b.reset();
    CHECK(BlocksInUse(*pool_a) == 0);
    CHECK(BlocksInUse(*pool_b) == 0);
    pool_a.reset();
    pool_b.reset();
    CHECK(dir.Files() == 0);
  }
  // A channel of h1's pool, created (owned) by this process.
  BlockRef ChannelOnH1(uint32_t capacity) {
    absl::StatusOr<BlockRef> ref = ShmChannel::Create(*pool_a, capacity);
    REQUIRE(ref.ok());
    return *ref;
  }
  void Destroy(const BlockRef& ref) {
    absl::StatusOr<ShmChannel> ch = ShmChannel::Open(*pool_a, ref);
    REQUIRE(ch.ok());
    CHECK(ch->Destroy().ok());
  }
  ShmDir dir;
  std::unique_ptr<ShmPool> pool_a = MakePool(dir, "pool-a");
  std::unique_ptr<ShmPool> pool_b = MakePool(dir, "pool-b");
  FakeDirectory directory;
  std::unique_ptr<AgentDictionary> dict_a, dict_b;
  std::unique_ptr<AgentChannels> chan_a, chan_b;
  std::unique_ptr<DataPlane> a, b;
};

TEST_CASE("a channel of h1's pool through h2's agent: send, receive, would-block, end of stream") {
  TwoChannelNodes nodes;
  const BlockRef ref = nodes.ChannelOnH1(2);
  v1::ChannelRequest send = Request("h1", v1::ChannelRequest::SEND, ref);
  send.set_message(Pattern(8 * kMiB, 7));
  absl::StatusOr<v1::ChannelReply> sent = nodes.chan_b->Route(send);
  INFO(sent.status().ToString());
  REQUIRE(sent.ok());
  CHECK_FALSE(sent->would_block());
  send.set_message("small");
  REQUIRE(nodes.chan_b->Route(send).ok());
  // Full (capacity 2): the home agent answers would_block instead of waiting.
  absl::StatusOr<v1::ChannelReply> full = nodes.chan_b->Route(send);
  REQUIRE(full.ok());
  CHECK(full->would_block());

  absl::StatusOr<v1::ChannelReply> stats =
      nodes.chan_b->Route(Request("h1", v1::ChannelRequest::STATS, ref));
  REQUIRE(stats.ok());
  CHECK(stats->count() == 2);
  CHECK(stats->capacity() == 2);

  const v1::ChannelRequest recv = Request("h1", v1::ChannelRequest::RECV, ref);
  absl::StatusOr<v1::ChannelReply> first = nodes.chan_b->Route(recv);
  REQUIRE(first.ok());
  CHECK(first->message() == Pattern(8 * kMiB, 7));
  CHECK(nodes.chan_a->Route(recv)->message() == "small");  // at home, the same channel
  absl::StatusOr<v1::ChannelReply> empty = nodes.chan_b->Route(recv);
  REQUIRE(empty.ok());
  CHECK(empty->would_block());

  // A wait asked for longer than kMaxWait is capped: the call returns.
  v1::ChannelRequest long_wait = recv;
  long_wait.set_wait_ms(60000);
  CHECK(nodes.chan_b->Route(long_wait)->would_block());

  send.set_message("last");
  REQUIRE(nodes.chan_b->Route(send).ok());
  REQUIRE(nodes.chan_b->Route(Request("h1", v1::ChannelRequest::CLOSE, ref)).ok());
  CHECK(nodes.chan_b->Route(recv)->message() == "last");
  CHECK(absl::IsOutOfRange(nodes.chan_b->Route(recv).status()));
  CHECK(absl::IsFailedPrecondition(nodes.chan_b->Route(send).status()));
  nodes.Destroy(ref);
  // Gone: NotFound, with the node named by the forwarding.
  absl::StatusOr<v1::ChannelReply> gone = nodes.chan_b->Route(recv);
  CHECK(absl::IsNotFound(gone.status()));
  CHECK(absl::StrContains(gone.status().message(), "h1"));
}

TEST_CASE("a Pipe's other end: claimed from h2, a dead process at home fails Unavailable") {
  TwoChannelNodes nodes;
  const BlockRef ref = nodes.ChannelOnH1(4);
  absl::StatusOr<BlockRef> ends = nodes.pool_a->Allocate(PipeEnds::kBytes);
  REQUIRE(ends.ok());
  std::memset(nodes.pool_a->Resolve(*ends)->data(), 0, PipeEnds::kBytes);

  // End 1 goes to a process of h2: recorded with its node.
  v1::ChannelRequest claim = Request("h1", v1::ChannelRequest::CLAIM_END, ref);
  claim.set_pids_ref(ends->Encode());
  claim.set_end(1);
  claim.set_caller_pid(4242);
  claim.set_caller_node("h2");
  REQUIRE(nodes.chan_b->Route(claim).ok());
  const char* block = nodes.pool_a->Resolve(*ends)->data();
  int32_t pid1 = 0;
  std::memcpy(&pid1, block + 4, 4);
  CHECK(pid1 == 4242);
  CHECK(std::string(block + PipeEnds::kNodesOffset + PipeEnds::kNodeBytes) == "h2");

  // End 0 is held at home by a process that has exited: h2's receive on
  // end 1 fails Unavailable instead of waiting.
  const pid_t child = fork();
  if (child == 0) _exit(0);
  REQUIRE(WaitChild(child) == 0);
  int32_t dead = child;
  std::memcpy(nodes.pool_a->Resolve(*ends)->data(), &dead, 4);
  v1::ChannelRequest recv = Request("h1", v1::ChannelRequest::RECV, ref);
  recv.set_pids_ref(ends->Encode());
  recv.set_end(1);
  recv.set_wait_ms(200);  // liveness is looked at after kLivenessInterval of waiting
  absl::StatusOr<v1::ChannelReply> lost = nodes.chan_b->Route(recv);
  INFO(lost.status().ToString());
  CHECK(absl::IsUnavailable(lost.status()));
  // A bad end is refused naming the field.
  recv.set_end(2);
  CHECK(absl::StrContains(nodes.chan_b->Route(recv).status().message(), "end is 2"));

  REQUIRE(nodes.pool_a->Free(*ends).ok());
  nodes.Destroy(ref);
}

TEST_CASE("PEER_ALIVE is answered by the process's node; NODE_ID by the local agent") {
  TwoChannelNodes nodes;
  v1::ChannelRequest alive;
  alive.set_op(v1::ChannelRequest::PEER_ALIVE);
  alive.set_node_id("h1");
  alive.set_caller_pid(getpid());
  alive.set_timeout_ms(10000);
  CHECK(nodes.chan_b->Route(alive)->alive());
  const pid_t child = fork();
  if (child == 0) _exit(0);
  REQUIRE(WaitChild(child) == 0);
  alive.set_caller_pid(child);
  CHECK_FALSE(nodes.chan_b->Route(alive)->alive());
  v1::ChannelRequest who;
  who.set_op(v1::ChannelRequest::NODE_ID);
  CHECK(nodes.chan_b->Route(who)->node_id() == "h2");
}

TEST_CASE("the Dictionary's calls still go through the dispatcher; unknown services are refused") {
  TwoChannelNodes nodes;
  v1::DictRequest put;
  put.set_node_id("h1");
  put.set_dict_id("d");
  put.set_op(v1::DictRequest::PUT);
  put.add_keys("k");
  put.add_values("v");
  put.set_timeout_ms(10000);
  REQUIRE(nodes.dict_b->Route(put).ok());
  CHECK(BlocksInUse(*nodes.pool_a) == 1);
  v1::DictRequest destroy = put;
  destroy.set_op(v1::DictRequest::DESTROY);
  destroy.clear_keys();
  destroy.clear_values();
  REQUIRE(nodes.dict_b->Route(destroy).ok());

  absl::StatusOr<std::string> unknown = nodes.b->Call("h1", "Zwhatever", absl::Seconds(10));
  CHECK(absl::IsInvalidArgument(unknown.status()));
  CHECK(absl::StrContains(unknown.status().message(), "service byte 90"));
  // A channel payload without its service byte (as an old sender's) is refused too.
  v1::ChannelRequest bare;
  bare.set_op(v1::ChannelRequest::STATS);
  CHECK_FALSE(nodes.b->Call("h1", bare.SerializeAsString(), absl::Seconds(10)).ok());
}

TEST_CASE("the home node's agent gone: the channel's operations fail Unavailable naming it") {
  TwoChannelNodes nodes;
  const BlockRef ref = nodes.ChannelOnH1(4);
  nodes.a.reset();  // h1's data plane closes
  absl::StatusOr<v1::ChannelReply> lost =
      nodes.chan_b->Route(Request("h1", v1::ChannelRequest::RECV, ref));
  INFO(lost.status().ToString());
  CHECK_FALSE(lost.ok());
  CHECK(absl::StrContains(lost.status().message(), "h1"));
  nodes.Destroy(ref);
}

// A SEND from h2 that names a block of h2's pool holding the message.
v1::ChannelRequest SendByBlock(const BlockRef& channel, const BlockRef& block, uint64_t size) {
  v1::ChannelRequest r = Request("h1", v1::ChannelRequest::SEND, channel);
  r.set_block_node("h2");
  r.set_block_ref(block.Encode());
  r.set_block_size(size);
  return r;
}

// A RECV of this process as h2's, which takes a large message as a block of h2's pool.
v1::ChannelRequest RecvAsBlock(const BlockRef& channel) {
  v1::ChannelRequest r = Request("h1", v1::ChannelRequest::RECV, channel);
  r.set_accept_block(true);
  r.set_caller_pid(getpid());
  r.set_caller_node("h2");
  return r;
}

TEST_CASE("large messages by block: pulled into h1's pool on send, pushed into h2's on receive") {
  TwoChannelNodes nodes;
  const BlockRef ref = nodes.ChannelOnH1(2);
  constexpr uint64_t kBig = 8 * kMiB;
  const BlockRef mine = WriteBlock(*nodes.pool_b, kBig, 11);
  absl::StatusOr<v1::ChannelReply> sent = nodes.chan_b->Route(SendByBlock(ref, mine, kBig));
  INFO(sent.status().ToString());
  REQUIRE(sent.ok());
  CHECK_FALSE(sent->would_block());
  CHECK(BlocksInUse(*nodes.pool_b) == 1);  // only the sender's, which it frees
  REQUIRE(nodes.pool_b->Free(mine).ok());
  // Below the threshold the message still comes in the reply; inline ones too.
  v1::ChannelRequest medium = Request("h1", v1::ChannelRequest::SEND, ref);
  medium.set_message(Pattern(AgentChannels::kBlockThreshold - 1, 12));
  REQUIRE(nodes.chan_b->Route(medium).ok());
  // Full: the pulled copy is dropped and the sender told to retry.
  const BlockRef more = WriteBlock(*nodes.pool_b, kBig, 13);
  absl::StatusOr<v1::ChannelReply> full = nodes.chan_b->Route(SendByBlock(ref, more, kBig));
  REQUIRE(full.ok());
  CHECK(full->would_block());
  REQUIRE(nodes.pool_b->Free(more).ok());

  absl::StatusOr<v1::ChannelReply> got = nodes.chan_b->Route(RecvAsBlock(ref));
  INFO(got.status().ToString());
  REQUIRE(got.ok());
  REQUIRE(got->block_size() == kBig);
  CHECK(got->message().empty());
  absl::StatusOr<BlockRef> there = BlockRef::Decode(got->block_ref());
  REQUIRE(there.ok());
  CHECK(Holds(*nodes.pool_b, *there, kBig, 11));
  REQUIRE(nodes.pool_b->Free(*there).ok());
  absl::StatusOr<v1::ChannelReply> second = nodes.chan_b->Route(RecvAsBlock(ref));
  REQUIRE(second.ok());
  CHECK(second->block_ref().empty());
  CHECK(second->message() == Pattern(AgentChannels::kBlockThreshold - 1, 12));
  CHECK(BlocksInUse(*nodes.pool_b) == 0);
  CHECK(BlocksInUse(*nodes.pool_a) == 1);  // the channel's own block
  nodes.Destroy(ref);
}

TEST_CASE("large messages by block: a sender's block that cannot be pulled fails naming its node") {
  TwoChannelNodes nodes;
  const BlockRef ref = nodes.ChannelOnH1(2);
  const BlockRef mine = WriteBlock(*nodes.pool_b, kMiB, 14);
  // Larger than the block: refused by the Pull, nothing queued.
  absl::StatusOr<v1::ChannelReply> sent =
      nodes.chan_b->Route(SendByBlock(ref, mine, 64 * kMiB));
  INFO(sent.status().ToString());
  CHECK_FALSE(sent.ok());
  CHECK(absl::StrContains(sent.status().message(), "node h2"));
  REQUIRE(nodes.pool_b->Free(mine).ok());
  absl::StatusOr<v1::ChannelReply> stats =
      nodes.chan_b->Route(Request("h1", v1::ChannelRequest::STATS, ref));
  REQUIRE(stats.ok());
  CHECK(stats->count() == 0);
  CHECK(BlocksInUse(*nodes.pool_a) == 1);
  nodes.Destroy(ref);
}

TEST_CASE("large messages by block: the receiver's node lost after the dequeue keeps the message") {
  TwoChannelNodes nodes;
  const BlockRef ref = nodes.ChannelOnH1(2);
  constexpr uint64_t kBig = 4 * kMiB;
  const BlockRef mine = WriteBlock(*nodes.pool_b, kBig, 15);
  REQUIRE(nodes.chan_b->Route(SendByBlock(ref, mine, kBig)).ok());
  REQUIRE(nodes.pool_b->Free(mine).ok());
  v1::ChannelRequest after = Request("h1", v1::ChannelRequest::SEND, ref);
  after.set_message("after");
  REQUIRE(nodes.chan_b->Route(after).ok());
  nodes.b.reset();  // h2's data plane is gone: the push to it fails
  // The home agent takes the message, cannot place it on h2, and puts it back first in line.
  absl::StatusOr<v1::ChannelReply> lost = nodes.chan_a->Apply(RecvAsBlock(ref));
  INFO(lost.status().ToString());
  REQUIRE_FALSE(lost.ok());
  CHECK(absl::IsUnavailable(lost.status()));
  CHECK(absl::StrContains(lost.status().message(), "node h2"));
  CHECK(absl::StrContains(lost.status().message(), "kept in the channel"));
  // Another receiver (here, at home) gets it whole, then the next one.
  absl::StatusOr<ShmChannel> channel = ShmChannel::Open(*nodes.pool_a, ref);
  REQUIRE(channel.ok());
  std::string got;
  REQUIRE(channel->ReceiveInto(got, absl::Seconds(5)).ok());
  CHECK(got == Pattern(kBig, 15));
  REQUIRE(channel->ReceiveInto(got, absl::Seconds(5)).ok());
  CHECK(got == "after");
  CHECK(BlocksInUse(*nodes.pool_a) == 1);
  CHECK(BlocksInUse(*nodes.pool_b) == 0);
  nodes.Destroy(ref);
}

// A party of h2 (this process, as h2's) at a Barrier of h1's pool.
v1::ChannelRequest BarrierOp(v1::ChannelRequest::Op op, const BlockRef& ref) {
  v1::ChannelRequest r = Request("h1", op, ref);
  r.set_caller_pid(getpid());
  r.set_caller_node("h2");
  r.set_wait_ms(10);
  return r;
}

v1::ChannelRequest AwaitOp(const BlockRef& ref, const v1::ChannelReply& arrived) {
  v1::ChannelRequest r = BarrierOp(v1::ChannelRequest::BARRIER_AWAIT, ref);
  *r.mutable_ticket() = arrived.ticket();
  return r;
}

ShmBarrier BarrierOnH1(TwoChannelNodes& nodes, uint32_t parties) {
  absl::StatusOr<BlockRef> ref = ShmBarrier::Create(*nodes.pool_a, parties);
  REQUIRE(ref.ok());
  absl::StatusOr<ShmBarrier> barrier = ShmBarrier::Open(*nodes.pool_a, *ref);
  REQUIRE(barrier.ok());
  return *barrier;
}

TEST_CASE("a Barrier of h1's pool with parties on h2: one arrival each however often retried") {
  TwoChannelNodes nodes;
  ShmBarrier home = BarrierOnH1(nodes, 3);
  const BlockRef ref = home.ref();
  for (int round = 0; round < 3; ++round) {
    absl::StatusOr<v1::ChannelReply> first =
        nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_ARRIVE, ref));
    INFO(first.status().ToString());
    REQUIRE(first.ok());
    CHECK(first->would_block());
    CHECK(first->ticket().index() == 0);
    for (int slice = 0; slice < 3; ++slice) {
      absl::StatusOr<v1::ChannelReply> again = nodes.chan_b->Route(AwaitOp(ref, *first));
      REQUIRE(again.ok());
      CHECK(again->would_block());
    }
    absl::StatusOr<v1::ChannelReply> stats =
        nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_STATS, ref));
    REQUIRE(stats.ok());
    CHECK(stats->parties() == 3);
    CHECK(stats->n_waiting() == 1);
    CHECK_FALSE(stats->broken());
    absl::StatusOr<v1::ChannelReply> second =
        nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_ARRIVE, ref));
    REQUIRE(second.ok());
    CHECK(second->ticket().index() == 1);
    // The third party waits at home, in this process: it ends the round.
    CHECK(*home.ArriveAndWait(absl::Seconds(20)) == 2);
    CHECK_FALSE(nodes.chan_b->Route(AwaitOp(ref, *first))->would_block());
    CHECK_FALSE(nodes.chan_b->Route(AwaitOp(ref, *second))->would_block());
  }
  REQUIRE(nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_ABORT, ref)).ok());
  CHECK(nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_STATS, ref))->broken());
  absl::StatusOr<v1::ChannelReply> refused =
      nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_ARRIVE, ref));
  CHECK(absl::IsFailedPrecondition(refused.status()));
  CHECK(absl::StrContains(refused.status().message(), "abort"));
  REQUIRE(nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_RESET, ref)).ok());
  CHECK_FALSE(*home.broken());
  REQUIRE(home.Destroy().ok());
  // Gone: NotFound, with the node named by the forwarding.
  absl::StatusOr<v1::ChannelReply> gone =
      nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_STATS, ref));
  CHECK(absl::IsNotFound(gone.status()));
  CHECK(absl::StrContains(gone.status().message(), "h1"));
}

// A party of h2 arrives at `home`; then its request `op` with the ticket it got.
v1::ChannelRequest ArrivedThen(TwoChannelNodes& nodes, const ShmBarrier& home,
                               v1::ChannelRequest::Op op) {
  absl::StatusOr<v1::ChannelReply> arrived =
      nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_ARRIVE, home.ref()));
  REQUIRE(arrived.ok());
  v1::ChannelRequest then = AwaitOp(home.ref(), *arrived);
  then.set_op(op);
  return then;
}

TEST_CASE("a party of h2 that gives up at its timeout breaks the Barrier at home") {
  TwoChannelNodes nodes;
  ShmBarrier home = BarrierOnH1(nodes, 2);
  v1::ChannelRequest give_up = ArrivedThen(nodes, home, v1::ChannelRequest::BARRIER_GIVE_UP);
  give_up.set_party_timeout_ms(1500);
  CHECK(absl::IsDeadlineExceeded(nodes.chan_b->Route(give_up).status()));
  absl::Status local = home.Wait(absl::Seconds(20));
  CHECK(absl::IsFailedPrecondition(local));
  CHECK(absl::StrContains(local.message(), "timed out after 1.5s"));
  REQUIRE(home.Destroy().ok());
}

TEST_CASE("a party of h2 interrupted while it waits breaks the Barrier at home at once") {
  TwoChannelNodes nodes;
  ShmBarrier home = BarrierOnH1(nodes, 2);
  v1::ChannelRequest interrupt = ArrivedThen(nodes, home, v1::ChannelRequest::BARRIER_INTERRUPT);
  // A long reason is cut short; the party's process and node are added.
  interrupt.set_why("was interrupted by KeyboardInterrupt" + std::string(300, '!'));
  REQUIRE(nodes.chan_b->Route(interrupt).ok());
  absl::Status local = home.Wait(absl::Seconds(20));
  CHECK(absl::IsFailedPrecondition(local));
  INFO(local.message());
  CHECK(absl::StrContains(local.message(), "party 0 of the round was interrupted by KeyboardInterrupt"));
  CHECK(absl::StrContains(local.message(), " of node h2)"));
  CHECK(local.message().size() < 300);
  // Once broken, a late interruption (as from a retried call) is no error.
  REQUIRE(nodes.chan_b->Route(interrupt).ok());
  REQUIRE(home.Destroy().ok());
}

TEST_CASE("a party of h2 that stops calling breaks the Barrier for the parties at home") {
  // h1's clock runs two leases behind: a lease it gives has already lapsed,
  // as when the party's process died, or its node, right after arriving.
  TwoChannelNodes nodes(
      [] { return common::shm_object::MonotonicNow() - 2 * AgentBarriers::kLease; });
  ShmBarrier home = BarrierOnH1(nodes, 3);
  REQUIRE(nodes.chan_b->Route(BarrierOp(v1::ChannelRequest::BARRIER_ARRIVE, home.ref())).ok());
  const absl::Duration start = common::shm_object::MonotonicNow();
  absl::Status local = home.Wait(absl::Seconds(20));
  CHECK(common::shm_object::MonotonicNow() - start < absl::Seconds(5));
  INFO(local.message());
  CHECK(absl::IsFailedPrecondition(local));
  CHECK(absl::StrContains(local.message(), absl::StrCat("process ", getpid(), " of node h2")));
  REQUIRE(home.Destroy().ok());
}

}  // namespace
}  // namespace dragon::agent::data_plane_test
