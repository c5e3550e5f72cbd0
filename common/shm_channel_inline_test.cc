// ShmChannel's small messages, which travel inside the ring's slots
// (ShmChannel::kInlineBytes): sizes around the limit, many producers and
// consumers, senders and receivers killed mid-operation, close and back-pressure.
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/shm_channel.h"
#include "common/shm_channel_test_util.h"

namespace dragon::common {
namespace shm_pool_test {
namespace {

constexpr uint64_t kInline = ShmChannel::kInlineBytes;
// Numbered messages of 8 to 207 bytes: all inline.
constexpr uint32_t kSmallSpread = 200;
static_assert(8 + kSmallSpread - 1 <= kInline, "small messages fit a slot");

uint64_t BlocksInUse(ShmPool& pool) {
  absl::StatusOr<ShmPoolStats> stats = pool.Stats();
  REQUIRE(stats.ok());
  return stats->blocks_in_use;
}

TEST_CASE("channel inline: sizes around the limit; only larger ones take a pool block") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 8);
  const std::vector<uint64_t> sizes = {0, 1, 8, kInline - 1, kInline, kInline + 1, 4096};
  for (uint64_t size : sizes) REQUIRE(c.Send(Bytes(Text(size, size)), kLong).ok());
  CHECK(BlocksInUse(*pool) == 1 + 2);  // the channel, kInline + 1 and 4096

  // ReceiveSmallInto: inline ones in the string, larger ones as the caller's block.
  for (uint64_t size : sizes) {
    std::string small;
    absl::StatusOr<ShmMessage> m = c.ReceiveSmallInto(small, kLong);
    REQUIRE(m.ok());
    CHECK(m->size == size);
    CHECK(m->in_small == (size <= kInline));
    if (m->in_small) {
      CHECK(small == Text(size, size));
    } else {
      absl::StatusOr<absl::Span<char>> span = pool->Resolve(m->block);
      REQUIRE(span.ok());
      CHECK(std::string(span->data(), size) == Text(size, size));
      REQUIRE(pool->Free(m->block).ok());
    }
  }
  // Receive gives every message a block of the receiver's, inline ones too.
  for (uint64_t size : sizes) REQUIRE(c.Send(Bytes(Text(size, size + 1)), kLong).ok());
  for (uint64_t size : sizes) {
    absl::StatusOr<ShmMessage> m = c.Receive(kLong);
    REQUIRE(m.ok());
    CHECK(!m->in_small);
    CHECK(m->size == size);
    absl::StatusOr<absl::Span<char>> span = pool->Resolve(m->block);
    REQUIRE(span.ok());
    CHECK(std::string(span->data(), size) == Text(size, size + 1));
    CHECK(*pool->FreeIfOwner(m->block, getpid()));
  }
  CHECK(BlocksInUse(*pool) == 1);

  // Each size to another process and back (ReceiveInto both ways).
  ShmChannel back = MustCreateChannel(*pool, 2);
  const pid_t echo = ForkChild([&] {
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::string message;
      if (!c.ReceiveInto(message, kLong).ok()) return 1;
      if (!back.Send(Bytes(message), kLong).ok()) return 2;
    }
    return 0;
  });
  for (uint64_t size : sizes) {
    REQUIRE(c.Send(Bytes(Text(size, size + 2)), kLong, echo).ok());
    std::string got;
    REQUIRE(back.ReceiveInto(got, kLong, echo).ok());
    CHECK(got == Text(size, size + 2));
  }
  ExpectExit0(echo);
  REQUIRE(c.Destroy().ok());
  REQUIRE(back.Destroy().ok());
  ExpectWhole(*pool);
}

// Count, sum and sum of squares of the ids a consumer got: equal totals with
// equal counts mean none was lost and none came twice.
struct IdSums {
  uint64_t count = 0, sum = 0, squares = 0;
  void Add(uint64_t id) {
    count += 1;
    sum += id;
    squares += id * id;
  }
};

TEST_CASE("channel inline: 4 producers x 4 consumers x 5,000 small messages, each exactly once") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 16);
  constexpr uint32_t kProducers = 4, kConsumers = 4, kEach = 5000;
  Pipe results;
  std::vector<pid_t> consumers, producers;
  for (uint32_t k = 0; k < kConsumers; ++k) {
    consumers.push_back(ForkChild([&] {
      IdSums sums;
      for (;;) {
        std::string got;
        absl::Status received = c.ReceiveInto(got, kLong);
        if (absl::IsOutOfRange(received)) break;
        if (!received.ok()) return 1;
        uint32_t who, serial;
        if (!Parse(got, &who, &serial, kSmallSpread)) return 2;
        sums.Add(uint64_t{who} * kEach + serial + 1);
      }
      return write(results.fds[1], &sums, sizeof(sums)) == sizeof(sums) ? 0 : 3;
    }));
  }
  for (uint32_t p = 0; p < kProducers; ++p) {
    producers.push_back(ForkChild([&, p] {
      for (uint32_t i = 0; i < kEach; ++i) {
        if (!c.Send(Bytes(Numbered(p, i, kSmallSpread)), kLong).ok()) return 1;
      }
      return 0;
    }));
  }
  for (pid_t pid : producers) ExpectExit0(pid);
  CHECK(BlocksInUse(*pool) == 1);  // whatever is still queued is in the slots
  REQUIRE(c.Close().ok());
  for (pid_t pid : consumers) ExpectExit0(pid);
  IdSums totals, expected;
  for (uint32_t k = 0; k < kConsumers; ++k) {
    IdSums sums;
    memcpy(&sums, Receive(results.fds[0], sizeof(sums)).data(), sizeof(sums));
    totals.count += sums.count;
    totals.sum += sums.sum;
    totals.squares += sums.squares;
  }
  for (uint64_t id = 1; id <= uint64_t{kProducers} * kEach; ++id) expected.Add(id);
  CHECK(totals.count == expected.count);
  CHECK(totals.sum == expected.sum);
  CHECK(totals.squares == expected.squares);
  REQUIRE(c.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel inline: a sender SIGKILLed mid-send while two others keep sending") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 4);  // small: senders often wait for room
  constexpr uint32_t kEach = 3000;
  std::mt19937 random(14);
  for (int round = 0; round < 5; ++round) {
    std::vector<pid_t> steady;
    for (uint32_t p = 0; p < 2; ++p) {
      steady.push_back(ForkChild([&, p] {
        for (uint32_t i = 0; i < kEach; ++i) {
          if (!c.Send(Bytes(Numbered(p, i, kSmallSpread)), kLong).ok()) return 1;
        }
        return 0;
      }));
    }
    const pid_t victim = ForkChild([&] {
      for (uint32_t i = 0;; ++i) {
        if (!c.Send(Bytes(Numbered(2, i, kSmallSpread)), kLong).ok()) return 1;
      }
    });
    // Every producer's messages in order, none twice; the victim's (killed
    // at a random point, maybe holding the lock) a gapless prefix.
    uint32_t next[3] = {0, 0, 0};
    const uint32_t kill_after = 200 + random() % 2000;
    bool killed = false;
    for (uint32_t got_count = 0; next[0] < kEach || next[1] < kEach; ++got_count) {
      if (got_count == kill_after) {
        KillChild(victim);
        REQUIRE(pool->ReclaimOwner(victim).ok());
        killed = true;
      }
      std::string got;
      absl::Status received = c.ReceiveInto(got, kLong);
      INFO(received.ToString());
      REQUIRE(received.ok());
      uint32_t who, serial;
      REQUIRE(Parse(got, &who, &serial, kSmallSpread));
      REQUIRE(who < 3);
      REQUIRE(serial == next[who]++);
    }
    if (!killed) {
      KillChild(victim);
      REQUIRE(pool->ReclaimOwner(victim).ok());
    }
    for (pid_t pid : steady) ExpectExit0(pid);
    for (;;) {  // what the victim queued before dying
      std::string got;
      absl::Status received = c.ReceiveInto(got, absl::ZeroDuration());
      if (absl::IsDeadlineExceeded(received)) break;
      REQUIRE(received.ok());
      uint32_t who, serial;
      REQUIRE(Parse(got, &who, &serial, kSmallSpread));
      REQUIRE(who == 2);
      REQUIRE(serial == next[2]++);
    }
    CHECK(BlocksInUse(*pool) == 1);
  }
  REQUIRE(c.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel inline: a receiver SIGKILLed mid-receive loses at most one message") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(16 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 8);
  constexpr uint32_t kCount = 8000;  // 32 KB of serials per pipe at most: never blocks
  Pipe victim_got, survivor_got;
  auto consumer = [&](int fd) {
    return ForkChild([&c, fd] {
      for (;;) {
        std::string got;
        absl::Status received = c.ReceiveInto(got, kLong);
        if (absl::IsOutOfRange(received)) return 0;
        uint32_t who, serial;
        if (!received.ok() || !Parse(got, &who, &serial, kSmallSpread)) return 1;
        if (write(fd, &serial, sizeof(serial)) != sizeof(serial)) return 2;
      }
    });
  };
  const pid_t victim = consumer(victim_got.fds[1]);
  const pid_t survivor = consumer(survivor_got.fds[1]);
  for (uint32_t i = 0; i < kCount; ++i) {
    if (i == kCount / 2) KillChild(victim);  // wherever it is: waiting, locked, copying
    REQUIRE(c.Send(Bytes(Numbered(0, i, kSmallSpread)), kLong).ok());
  }
  REQUIRE(c.Close().ok());
  ExpectExit0(survivor);
  std::multiset<uint32_t> serials;
  for (Pipe* got : {&victim_got, &survivor_got}) {
    close(got->fds[1]);  // both writers are gone: read to the end
    got->fds[1] = -1;
    uint32_t serial;
    while (read(got->fds[0], &serial, sizeof(serial)) == sizeof(serial)) serials.insert(serial);
  }
  CHECK(std::set<uint32_t>(serials.begin(), serials.end()).size() == serials.size());
  CHECK(serials.size() + 1 >= kCount);
  CHECK(serials.size() <= kCount);
  CHECK(c.Stats()->count == 0);
  REQUIRE(pool->ReclaimOwner(victim).ok());
  REQUIRE(c.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel inline: killed before the commit of an inline send or receive") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(4 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 4);
  // Dead after copying its bytes into the slot: the message is whole, published.
  ExpectExit0(ForkChild([&] {
    ShmChannelTestPeer::DieBeforeInlineSendCommit(c, Text(kInline, 1));
    return 1;
  }));
  CHECK(c.Stats()->count == 1);
  CHECK(c.Stats()->repairs == 1);
  std::string got;
  REQUIRE(c.ReceiveInto(got, kLong).ok());
  CHECK(got == Text(kInline, 1));

  // Dead after taking an inline message: it was its own; the next receiver
  // gets the one after it.
  REQUIRE(c.Send(Bytes(Text(20, 2)), kLong).ok());
  REQUIRE(c.Send(Bytes(Text(30, 3)), kLong).ok());
  ExpectExit0(ForkChild([&] {
    ShmChannelTestPeer::DieBeforeReceiveCommit(c);
    return 1;
  }));
  REQUIRE(c.ReceiveInto(got, kLong).ok());
  CHECK(got == Text(30, 3));
  CHECK(c.Stats()->repairs == 2);
  CHECK(c.Stats()->count == 0);
  REQUIRE(c.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel inline: close with small messages queued drains them; destroy frees the rest") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(4 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 8);
  for (uint64_t serial = 0; serial < 3; ++serial) {
    REQUIRE(c.Send(Bytes(Text(10 + serial, serial)), kLong).ok());
  }
  REQUIRE(c.Close().ok());
  CHECK(c.Send(Bytes(Text(1, 9)), kLong).code() == absl::StatusCode::kFailedPrecondition);
  // A receiver in another process drains all three, then end of stream.
  ExpectExit0(ForkChild([&] {
    for (uint64_t serial = 0; serial < 3; ++serial) {
      std::string got;
      if (!c.ReceiveInto(got, kLong).ok() || got != Text(10 + serial, serial)) return 1;
    }
    return absl::IsOutOfRange(c.Receive(kLong).status()) ? 0 : 2;
  }));

  // Destroy with an inline and a block message still queued: nothing left.
  ShmChannel other = MustCreateChannel(*pool, 4);
  REQUIRE(other.Send(Bytes(Text(5, 1)), kLong).ok());
  REQUIRE(other.Send(Bytes(Text(5000, 2)), kLong).ok());
  REQUIRE(c.Destroy().ok());
  REQUIRE(other.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("channel inline: a full ring of small messages holds senders back until a slot frees") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(4 * kMiB);
  ShmChannel c = MustCreateChannel(*pool, 2);
  REQUIRE(c.Send(Bytes(Text(8, 1)), kLong).ok());
  REQUIRE(c.Send(Bytes(Text(8, 2)), kLong).ok());
  absl::Status full = c.Send(Bytes(Text(8, 3)), absl::Milliseconds(20));
  CHECK(full.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(absl::StrContains(full.message(), "channel full"));
  CHECK(c.Stats()->count == 2);
  // Two senders in other processes wait for room; each receive lets one in.
  std::vector<pid_t> senders;
  for (uint64_t serial : {3, 4}) {
    senders.push_back(ForkChild([&, serial] {
      return c.Send(Bytes(Text(8, serial)), kLong).ok() ? 0 : 1;
    }));
  }
  std::set<std::string> later;
  for (uint64_t serial = 1; serial <= 4; ++serial) {
    std::string got;
    REQUIRE(c.ReceiveInto(got, kLong).ok());
    if (serial <= 2) {
      CHECK(got == Text(8, serial));  // the first two in order
    } else {
      later.insert(got);
    }
    CHECK(c.Stats()->count <= 2);
  }
  CHECK(later == std::set<std::string>{Text(8, 3), Text(8, 4)});
  for (pid_t pid : senders) ExpectExit0(pid);
  REQUIRE(c.Destroy().ok());
  ExpectWhole(*pool);
}

}  // namespace
}  // namespace shm_pool_test
}  // namespace dragon::common
