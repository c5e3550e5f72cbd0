#include "common/shm_channel.h"

#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/shm_channel_test_util.h"

namespace dragon::common {

namespace shm_pool_test {
namespace {

TEST_CASE("channel: 0 B, 1 B and 1 MiB messages go to another process and back") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(64 * kMiB);
  {
    ShmChannel there = MustCreateChannel(*pool, 4);
    ShmChannel back = MustCreateChannel(*pool, 4);
    const pid_t echo = ForkChild([&] {
      for (int i = 0; i < 3; ++i) {
        std::string message;
        if (!there.ReceiveInto(message, kLong).ok()) return 1;
        if (!back.Send(Bytes(message), kLong).ok()) return 2;
      }
      return 0;
    });
    for (uint64_t size : {uint64_t{0}, uint64_t{1}, kMiB}) {
      const std::string sent = Text(size, size);
      REQUIRE(there.Send(Bytes(sent), kLong, echo).ok());
      std::string got;
      absl::Status received = back.ReceiveInto(got, kLong, echo);
      INFO(received.ToString());
      REQUIRE(received.ok());
      CHECK(got == sent);
    }
    ExpectExit0(echo);
    REQUIRE(there.Destroy().ok());
    REQUIRE(back.Destroy().ok());
    CHECK(ShmChannel::Open(*pool, there.ref()).status().code() == absl::StatusCode::kNotFound);
  }
  ExpectWhole(*pool);
}

TEST_CASE("channel: one producer's messages arrive in order") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 16);
  constexpr uint32_t kCount = 5000;
  const pid_t producer = ForkChild([&] {
    for (uint32_t i = 0; i < kCount; ++i) {
      if (!c.Send(Bytes(Numbered(1, i)), kLong).ok()) return 1;
    }
    return 0;
  });
  for (uint32_t i = 0; i < kCount; ++i) {
    std::string got;
    REQUIRE(c.ReceiveInto(got, kLong).ok());
    uint32_t who, serial;
    REQUIRE(Parse(got, &who, &serial));
    REQUIRE(serial == i);
  }
  ExpectExit0(producer);
  REQUIRE(c.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel: 8 producers x 8 consumers x 2,000 messages, each received exactly once") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(64 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 64);
  constexpr uint32_t kProducers = 8, kConsumers = 8, kEach = 2000;
  Pipe results;
  std::vector<pid_t> consumers, producers;
  for (uint32_t k = 0; k < kConsumers; ++k) {
    consumers.push_back(ForkChild([&] {
      // How many, and two sums of the ids: equal totals with equal counts
      // mean no id was lost and none came twice (checked by the sums of squares).
      uint64_t sums[3] = {0, 0, 0};
      for (;;) {
        std::string got;
        absl::Status received = c.ReceiveInto(got, kLong);
        if (absl::IsOutOfRange(received)) break;
        if (!received.ok()) return 1;
        uint32_t who, serial;
        if (!Parse(got, &who, &serial)) return 2;
        const uint64_t id = uint64_t{who} * kEach + serial + 1;
        sums[0] += 1;
        sums[1] += id;
        sums[2] += id * id;
      }
      return write(results.fds[1], sums, sizeof(sums)) == sizeof(sums) ? 0 : 3;
    }));
  }
  for (uint32_t p = 0; p < kProducers; ++p) {
    producers.push_back(ForkChild([&, p] {
      for (uint32_t i = 0; i < kEach; ++i) {
        if (!c.Send(Bytes(Numbered(p, i)), kLong).ok()) return 1;
      }
      return 0;
    }));
  }
  for (pid_t pid : producers) ExpectExit0(pid);
  REQUIRE(c.Close().ok());
  for (pid_t pid : consumers) ExpectExit0(pid);
  uint64_t totals[3] = {0, 0, 0};
  for (uint32_t k = 0; k < kConsumers; ++k) {
    const std::string sums = Receive(results.fds[0], 3 * sizeof(uint64_t));
    for (int i = 0; i < 3; ++i) totals[i] += reinterpret_cast<const uint64_t*>(sums.data())[i];
  }
  uint64_t expected[3] = {0, 0, 0};
  for (uint64_t id = 1; id <= uint64_t{kProducers} * kEach; ++id) {
    expected[0] += 1;
    expected[1] += id;
    expected[2] += id * id;
  }
  CHECK(totals[0] == expected[0]);
  CHECK(totals[1] == expected[1]);
  CHECK(totals[2] == expected[2]);
  REQUIRE(c.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel: a slow consumer makes producers wait, and nothing is lost") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 4);
  ShmChannel idle = MustCreateChannel(*pool, 1);  // nothing ever comes: the consumer's pause
  constexpr uint32_t kEach = 50;
  std::vector<pid_t> producers;
  for (uint32_t p = 0; p < 2; ++p) {
    producers.push_back(ForkChild([&, p] {
      for (uint32_t i = 0; i < kEach; ++i) {
        if (!c.Send(Bytes(Numbered(p, i)), kLong).ok()) return 1;
      }
      return 0;
    }));
  }
  uint32_t next[2] = {0, 0};
  bool saw_full = false;
  for (uint32_t i = 0; i < 2 * kEach; ++i) {
    CHECK(idle.Receive(absl::Milliseconds(2)).status().code() ==
          absl::StatusCode::kDeadlineExceeded);
    absl::StatusOr<ShmChannelStats> stats = c.Stats();
    REQUIRE(stats.ok());
    REQUIRE(stats->count <= 4);
    saw_full = saw_full || stats->count == 4;
    std::string got;
    REQUIRE(c.ReceiveInto(got, kLong).ok());
    uint32_t who, serial;
    REQUIRE(Parse(got, &who, &serial));
    REQUIRE(who < 2);
    REQUIRE(serial == next[who]++);
  }
  CHECK(saw_full);
  for (pid_t pid : producers) ExpectExit0(pid);
  REQUIRE(c.Destroy().ok());
  REQUIRE(idle.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel: timeouts both ways, a message too large, close and end of stream") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(4 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 1);
  absl::Duration start = shm_object::MonotonicNow();
  absl::Status empty = c.Receive(absl::Milliseconds(50)).status();
  absl::Duration took = shm_object::MonotonicNow() - start;
  CHECK(empty.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(absl::StrContains(empty.message(), "no message within 50ms"));
  CHECK(took >= absl::Milliseconds(50));
  CHECK(took < absl::Seconds(1));

  REQUIRE(c.Send(Bytes(Text(10, 1)), kLong).ok());
  start = shm_object::MonotonicNow();
  absl::Status full = c.Send(Bytes(Text(10, 2)), absl::Milliseconds(50));
  took = shm_object::MonotonicNow() - start;
  CHECK(full.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(absl::StrContains(full.message(), "channel full for 50ms"));
  CHECK(took >= absl::Milliseconds(50));
  CHECK(took < absl::Seconds(1));
  CHECK(pool->Stats()->blocks_in_use == 1);  // the channel: the queued message is in its slot

  absl::Status huge = c.Send(Bytes(std::string(8 * kMiB, 'x')), absl::ZeroDuration());
  CHECK(huge.code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(huge.message(), "larger than the largest block"));

  // A receiver waiting in another process wakes at Close with end of stream.
  ShmChannel other = MustCreateChannel(*pool, 2);
  Pipe ready;
  const pid_t waiter = ForkChild([&] {
    if (write(ready.fds[1], "r", 1) != 1) return 1;
    return absl::IsOutOfRange(other.Receive(kLong).status()) ? 0 : 2;
  });
  Receive(ready.fds[0], 1);
  REQUIRE(other.Close().ok());
  ExpectExit0(waiter);

  REQUIRE(c.Close().ok());
  CHECK(c.Send(Bytes(Text(1, 3)), kLong).code() == absl::StatusCode::kFailedPrecondition);
  CHECK(c.Stats()->closed);
  std::string got;
  REQUIRE(c.ReceiveInto(got, kLong).ok());  // drained after close
  CHECK(got == Text(10, 1));
  CHECK(c.Receive(kLong).status().code() == absl::StatusCode::kOutOfRange);
  REQUIRE(c.Destroy().ok());
  REQUIRE(other.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel: a producer SIGKILLed while sending leaves it usable and leaks nothing") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 8);
  std::mt19937 random(14);
  for (int round = 0; round < 30; ++round) {
    const pid_t producer = ForkChild([&] {
      for (uint32_t i = 0;; ++i) {
        if (!c.Send(Bytes(Numbered(round, i)), kLong).ok()) return 1;
      }
    });
    // Receive a few (the producer is mid-send at any point), then kill it.
    const uint32_t take = random() % 40;
    uint32_t next = 0;
    for (uint32_t i = 0; i < take; ++i) {
      std::string got;
      REQUIRE(c.ReceiveInto(got, kLong).ok());
      uint32_t who, serial;
      REQUIRE(Parse(got, &who, &serial));
      REQUIRE(serial == next++);
    }
    KillChild(producer);
    REQUIRE(pool->ReclaimOwner(producer).ok());
    // What it queued before dying is whole and in order.
    for (;;) {
      std::string got;
      absl::Status received = c.ReceiveInto(got, absl::ZeroDuration());
      if (absl::IsDeadlineExceeded(received)) break;
      REQUIRE(received.ok());
      uint32_t who, serial;
      REQUIRE(Parse(got, &who, &serial));
      REQUIRE(serial == next++);
    }
    REQUIRE(pool->Stats()->blocks_in_use == 1);  // the channel only
  }
  REQUIRE(c.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel: a process killed holding the lock, or mid-send, or mid-receive") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 4);
  ExpectExit0(ForkChild([&] { ShmChannelTestPeer::LockAndDie(c); return 1; }));
  REQUIRE(c.Send(Bytes(Text(100, 1)), kLong).ok());
  CHECK(c.Stats()->repairs == 1);

  // Dead before committing its send, but the block was the creator's: published.
  ExpectExit0(ForkChild([&] {
    ShmChannelTestPeer::DieBeforeSendCommit(*pool, c, Text(200, 2));
    return 1;
  }));
  CHECK(c.Stats()->count == 2);
  std::string got;
  REQUIRE(c.ReceiveInto(got, kLong).ok());
  CHECK(got == Text(100, 1));
  REQUIRE(c.ReceiveInto(got, kLong).ok());
  CHECK(got == Text(200, 2));

  // Dead before committing its receive: the message was its own; the next
  // receiver gets the one after it, and the janitor frees the dead one's.
  REQUIRE(c.Send(Bytes(Text(300, 3)), kLong).ok());
  REQUIRE(c.Send(Bytes(Text(400, 4)), kLong).ok());
  const pid_t dead = ForkChild([&] {
    ShmChannelTestPeer::DieBeforeReceiveCommit(c);
    return 1;
  });
  ExpectExit0(dead);
  REQUIRE(c.ReceiveInto(got, kLong).ok());
  CHECK(got == Text(400, 4));
  CHECK(*pool->ReclaimOwner(dead) > 0);
  CHECK(c.Stats()->repairs == 3);
  CHECK(c.Stats()->count == 0);
  REQUIRE(c.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel: a receiver learns within ~1 s that its peer or the creator died") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 4);
  Pipe hold, ready;
  const pid_t peer = ForkChild([&] {
    char byte;
    return read(hold.fds[0], &byte, 1) == 1 ? 0 : 1;  // until killed
  });
  const pid_t receiver = ForkChild([&] {
    if (write(ready.fds[1], "r", 1) != 1) return 1;
    absl::Status lost = c.Receive(kLong, peer).status();
    return absl::IsUnavailable(lost) && absl::StrContains(lost.message(), "peer process") ? 0 : 2;
  });
  Receive(ready.fds[0], 1);
  const absl::Duration killed = shm_object::MonotonicNow();
  kill(peer, SIGKILL);  // not reaped yet: a zombie is dead too
  ExpectExit0(receiver);
  CHECK(shm_object::MonotonicNow() - killed < absl::Seconds(1));
  KillChild(peer);
  REQUIRE(c.Destroy().ok());

  // A channel whose creator is killed while we wait.
  const pid_t creator = ForkChild([&] {
    absl::StatusOr<BlockRef> ref = ShmChannel::Create(*pool, 2);
    if (!ref.ok() || write(ready.fds[1], &*ref, sizeof(BlockRef)) != sizeof(BlockRef)) return 1;
    char byte;
    return read(hold.fds[0], &byte, 1) == 1 ? 0 : 1;
  });
  BlockRef ref;
  memcpy(&ref, Receive(ready.fds[0], sizeof(BlockRef)).data(), sizeof(BlockRef));
  ShmChannel theirs = MustOpen(*pool, ref);
  kill(creator, SIGKILL);
  const absl::Status gone = theirs.Receive(kLong).status();
  CHECK(gone.code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(gone.message(), absl::StrCat("creator (pid ", creator, ") exited")));
  KillChild(creator);
  REQUIRE(*pool->ReclaimOwner(creator) > 0);
  CHECK(ShmChannel::Open(*pool, ref).status().code() == absl::StatusCode::kNotFound);
  ExpectWhole(*pool);
}

TEST_CASE("channel: SendOwnedBlock queues a block without a copy; PutBack makes it the oldest again") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  {
    ShmChannel c = MustCreateChannel(*pool, 2);
    // A small message in a block too: queued as a block, received whole.
    for (const std::string& text : {std::string("tiny"), Text(kMiB, 3)}) {
      BlockRef block = *pool->Allocate(text.size());
      std::memcpy(pool->Resolve(block)->data(), text.data(), text.size());
      REQUIRE(c.SendOwnedBlock(block, text.size(), kLong).ok());
    }
    // Full: DeadlineExceeded, and the block is still the caller's to free.
    CHECK(absl::IsDeadlineExceeded(c.WaitForRoom(absl::Milliseconds(20))));
    BlockRef extra = *pool->Allocate(10);
    CHECK(absl::IsDeadlineExceeded(c.SendOwnedBlock(extra, 10, absl::Milliseconds(20))));
    CHECK(pool->FreeIfOwner(extra, getpid()).value());

    absl::StatusOr<ShmMessage> first = c.Receive(kLong);
    REQUIRE(first.ok());
    CHECK(std::string(pool->Resolve(first->block)->data(), first->size) == "tiny");
    // Another send took the free slot: the put-back still has a slot of its
    // own (kPutBackSlots beyond the capacity), and it is the oldest again.
    REQUIRE(c.WaitForRoom(absl::ZeroDuration()).ok());  // a slot is free now
    REQUIRE(c.Send(Bytes("later"), kLong).ok());
    REQUIRE(c.PutBack(first->block, first->size).ok());
    CHECK(c.Stats()->count == 3);
    // Senders still see it full at its capacity.
    CHECK(absl::IsDeadlineExceeded(c.WaitForRoom(absl::Milliseconds(20))));
    std::string got;
    REQUIRE(c.ReceiveInto(got, kLong).ok());
    CHECK(got == "tiny");
    CHECK(absl::IsDeadlineExceeded(c.WaitForRoom(absl::Milliseconds(20))));  // 2 of 2
    REQUIRE(c.ReceiveInto(got, kLong).ok());
    CHECK(got == Text(kMiB, 3));
    REQUIRE(c.ReceiveInto(got, kLong).ok());
    CHECK(got == "later");
    // A closed channel refuses new blocks but a put-back still goes in (receivers drain it).
    REQUIRE(c.Send(Bytes(Text(4096, 9)), kLong).ok());
    absl::StatusOr<ShmMessage> third = c.Receive(kLong);
    REQUIRE(third.ok());
    REQUIRE(c.Close().ok());
    CHECK(absl::IsFailedPrecondition(c.WaitForRoom(kLong)));
    BlockRef refused = *pool->Allocate(10);
    CHECK(absl::IsFailedPrecondition(c.SendOwnedBlock(refused, 10, kLong)));
    CHECK(pool->FreeIfOwner(refused, getpid()).value());
    REQUIRE(c.PutBack(third->block, third->size).ok());
    REQUIRE(c.ReceiveInto(got, kLong).ok());
    CHECK(got == Text(4096, 9));
    CHECK(absl::IsOutOfRange(c.ReceiveInto(got, absl::Milliseconds(10))));
    REQUIRE(c.Destroy().ok());
  }
  ExpectWhole(*pool);
}

TEST_CASE("channel: up to kPutBackSlots taken messages go back into a full channel, never one more") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  {
    ShmChannel c = MustCreateChannel(*pool, 2);
    std::vector<ShmMessage> taken;
    for (uint32_t i = 0; i <= ShmChannel::kPutBackSlots; ++i) {
      REQUIRE(c.Send(Bytes(Text(4096, static_cast<int>(i))), kLong).ok());
      absl::StatusOr<ShmMessage> m = c.Receive(kLong);
      REQUIRE(m.ok());
      taken.push_back(*m);
    }
    REQUIRE(c.Send(Bytes("a"), kLong).ok());
    REQUIRE(c.Send(Bytes("b"), kLong).ok());  // full for senders
    // Put back newest first, so the oldest ends first in line.
    for (uint32_t i = ShmChannel::kPutBackSlots; i >= 1; --i) {
      REQUIRE(c.PutBack(taken[i].block, taken[i].size).ok());
    }
    absl::Status over = c.PutBack(taken[0].block, taken[0].size);
    CHECK(absl::IsUnavailable(over));
    CHECK(absl::StrContains(over.message(), "taken and put back at once"));
    CHECK(pool->FreeIfOwner(taken[0].block, getpid()).value());  // still the caller's
    std::string got;
    for (uint32_t i = 1; i <= ShmChannel::kPutBackSlots; ++i) {
      REQUIRE(c.ReceiveInto(got, kLong).ok());
      CHECK(got == Text(4096, static_cast<int>(i)));
    }
    REQUIRE(c.ReceiveInto(got, kLong).ok());
    CHECK(got == "a");
    REQUIRE(c.ReceiveInto(got, kLong).ok());
    CHECK(got == "b");
    REQUIRE(c.Destroy().ok());
  }
  ExpectWhole(*pool);
}

}  // namespace
}  // namespace shm_pool_test
}  // namespace dragon::common
