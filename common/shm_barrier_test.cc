#include "common/shm_barrier.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <vector>

#include "absl/strings/match.h"
#include "common/shm_pool_test_util.h"

namespace dragon::common::shm_pool_test {
namespace {

const absl::Duration kLong = absl::Seconds(20);

ShmBarrier MustCreateBarrier(ShmPool& pool, uint32_t parties) {
  absl::StatusOr<BlockRef> ref = ShmBarrier::Create(pool, parties);
  REQUIRE(ref.ok());
  absl::StatusOr<ShmBarrier> barrier = ShmBarrier::Open(pool, *ref);
  REQUIRE(barrier.ok());
  return *barrier;
}

TEST_CASE("barrier: 4 processes x 100 rounds in lockstep") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  {
    ShmBarrier barrier = MustCreateBarrier(*pool, 4);
    CHECK(barrier.parties() == 4);
    // Arrivals, counted before each Wait: after round r's Wait every party
    // has arrived r+1 times, and none can be past round r+1 yet.
    BlockRef counter_ref = *pool->Allocate(sizeof(uint64_t));
    auto* arrivals = reinterpret_cast<std::atomic<uint64_t>*>(pool->Resolve(counter_ref)->data());
    arrivals->store(0);
    std::vector<pid_t> parties;
    for (int p = 0; p < 4; ++p) {
      parties.push_back(ForkChild([&] {
        for (uint64_t round = 0; round < 100; ++round) {
          arrivals->fetch_add(1);
          if (!barrier.Wait(kLong).ok()) return 1;
          const uint64_t seen = arrivals->load();
          if (seen < 4 * (round + 1) || seen > 4 * (round + 2)) return 2;
        }
        return 0;
      }));
    }
    for (pid_t pid : parties) ExpectExit0(pid);
    CHECK(*barrier.n_waiting() == 0);
    REQUIRE(pool->Free(counter_ref).ok());
    REQUIRE(barrier.Destroy().ok());
  }
  ExpectWhole(*pool);
}

TEST_CASE("barrier: a timeout breaks it for everyone until reset") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  ShmBarrier barrier = MustCreateBarrier(*pool, 3);
  Pipe ready;
  const pid_t other = ForkChild([&] {
    if (write(ready.fds[1], "r", 1) != 1) return 1;
    absl::Status broken = barrier.Wait(kLong);
    return absl::IsFailedPrecondition(broken) && absl::StrContains(broken.message(), "broken")
               ? 0
               : 2;
  });
  Receive(ready.fds[0], 1);
  const absl::Duration start = shm_object::MonotonicNow();
  absl::Status timed_out = barrier.Wait(absl::Milliseconds(200));
  CHECK(shm_object::MonotonicNow() - start >= absl::Milliseconds(200));
  CHECK(timed_out.code() == absl::StatusCode::kDeadlineExceeded);
  ExpectExit0(other);
  CHECK(*barrier.broken());
  CHECK(barrier.Wait(kLong).code() == absl::StatusCode::kFailedPrecondition);

  REQUIRE(barrier.Reset().ok());
  CHECK_FALSE(*barrier.broken());
  std::vector<pid_t> parties;
  for (int p = 0; p < 2; ++p) {
    parties.push_back(ForkChild([&] { return barrier.Wait(kLong).ok() ? 0 : 1; }));
  }
  CHECK(barrier.Wait(kLong).ok());
  for (pid_t pid : parties) ExpectExit0(pid);
  REQUIRE(barrier.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("barrier: abort wakes the waiters; a dead creator is noticed") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  ShmBarrier barrier = MustCreateBarrier(*pool, 2);
  Pipe ready, hold;
  const pid_t waiter = ForkChild([&] {
    if (write(ready.fds[1], "r", 1) != 1) return 1;
    return absl::IsFailedPrecondition(barrier.Wait(kLong)) ? 0 : 2;
  });
  Receive(ready.fds[0], 1);
  {
    // Until the waiter sleeps in Wait; the pause is a bounded futex wait.
    ShmChannel idle = *ShmChannel::Open(*pool, *ShmChannel::Create(*pool, 1));
    while (*barrier.n_waiting() == 0) (void)idle.Receive(absl::Milliseconds(1));
    REQUIRE(idle.Destroy().ok());
  }
  REQUIRE(barrier.Abort().ok());
  ExpectExit0(waiter);
  REQUIRE(barrier.Destroy().ok());

  const pid_t creator = ForkChild([&] {
    absl::StatusOr<BlockRef> ref = ShmBarrier::Create(*pool, 2);
    if (!ref.ok() || write(ready.fds[1], &*ref, sizeof(BlockRef)) != sizeof(BlockRef)) return 1;
    char byte;
    return read(hold.fds[0], &byte, 1) == 1 ? 0 : 1;
  });
  BlockRef ref;
  memcpy(&ref, Receive(ready.fds[0], sizeof(BlockRef)).data(), sizeof(BlockRef));
  absl::StatusOr<ShmBarrier> theirs = ShmBarrier::Open(*pool, ref);
  REQUIRE(theirs.ok());
  kill(creator, SIGKILL);
  absl::Status gone = theirs->Wait(kLong);
  CHECK(gone.code() == absl::StatusCode::kUnavailable);
  KillChild(creator);
  REQUIRE(*pool->ReclaimOwner(creator) > 0);
  ExpectWhole(*pool);
}

RemoteParty Remote(pid_t pid, absl::Duration lease) {
  return RemoteParty{pid, "h2", shm_object::MonotonicNow() + lease};
}

TEST_CASE("barrier: a remote party arrives once however often its slice is retried") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  ShmBarrier barrier = MustCreateBarrier(*pool, 3);
  absl::StatusOr<BarrierTicket> first = barrier.Arrive(Remote(101, kLong));
  REQUIRE(first.ok());
  CHECK(first->index == 0);
  for (int slice = 0; slice < 5; ++slice) {
    absl::StatusOr<bool> done =
        barrier.AwaitRound(*first, absl::Milliseconds(1), shm_object::MonotonicNow() + kLong);
    REQUIRE(done.ok());
    CHECK_FALSE(*done);
  }
  CHECK(*barrier.n_waiting() == 1);
  absl::StatusOr<BarrierTicket> second = barrier.Arrive(Remote(102, kLong));
  REQUIRE(second.ok());
  CHECK(second->index == 1);
  // The last party, of this node, completes the round: its index is 2.
  absl::StatusOr<uint32_t> last = barrier.ArriveAndWait(kLong);
  REQUIRE(last.ok());
  CHECK(*last == 2);
  CHECK(*barrier.AwaitRound(*first, absl::ZeroDuration(), shm_object::MonotonicNow() + kLong));
  CHECK(*barrier.AwaitRound(*second, absl::ZeroDuration(), shm_object::MonotonicNow() + kLong));
  // Its time ran out just as the round ended: done after all, not broken.
  CHECK(barrier.GiveUp(*first, absl::Seconds(1)).ok());
  CHECK(*barrier.n_waiting() == 0);
  CHECK_FALSE(*barrier.broken());
  REQUIRE(barrier.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("barrier: a remote party's timeout breaks it, reset mends it") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  ShmBarrier barrier = MustCreateBarrier(*pool, 2);
  absl::StatusOr<BarrierTicket> ticket = barrier.Arrive(Remote(101, kLong));
  REQUIRE(ticket.ok());
  absl::Status gave_up = barrier.GiveUp(*ticket, absl::Seconds(2));
  CHECK(absl::IsDeadlineExceeded(gave_up));
  CHECK(*barrier.broken());
  absl::Status later = barrier.Wait(kLong);
  CHECK(absl::IsFailedPrecondition(later));
  CHECK(absl::StrContains(later.message(), "timed out after 2s"));
  CHECK(absl::IsFailedPrecondition(barrier.Arrive(Remote(101, kLong)).status()));
  CHECK(absl::IsFailedPrecondition(
      barrier.AwaitRound(*ticket, absl::ZeroDuration(), shm_object::MonotonicNow()).status()));

  REQUIRE(barrier.Reset().ok());
  ticket = barrier.Arrive(Remote(101, kLong));
  REQUIRE(ticket.ok());
  CHECK(*barrier.ArriveAndWait(kLong) == 1);
  CHECK(*barrier.AwaitRound(*ticket, absl::ZeroDuration(), shm_object::MonotonicNow()));
  REQUIRE(barrier.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("barrier: a remote party whose lease lapses breaks it for the others") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  ShmBarrier barrier = MustCreateBarrier(*pool, 4);
  // Renewed: a lease renewed before it lapses keeps the arrival.
  absl::StatusOr<BarrierTicket> alive = barrier.Arrive(Remote(101, absl::Milliseconds(1)));
  REQUIRE(alive.ok());
  REQUIRE(
      barrier.AwaitRound(*alive, absl::ZeroDuration(), shm_object::MonotonicNow() + kLong).ok());
  // Lapsed (a lease that ended a second ago: nobody renewed it): the next
  // waiter to look breaks the barrier, naming the party.
  const absl::Duration a_second_ago = shm_object::MonotonicNow() - absl::Seconds(1);
  REQUIRE(barrier.Arrive(RemoteParty{202, "h3", a_second_ago}).ok());
  const absl::Duration start = shm_object::MonotonicNow();
  absl::Status local = barrier.Wait(kLong);
  CHECK(shm_object::MonotonicNow() - start < absl::Seconds(5));
  CHECK(absl::IsFailedPrecondition(local));
  INFO(local.message());
  CHECK(absl::StrContains(local.message(), "process 202 of node h3"));
  CHECK(absl::IsFailedPrecondition(
      barrier.AwaitRound(*alive, absl::ZeroDuration(), shm_object::MonotonicNow() + kLong)
          .status()));
  CHECK(*barrier.broken());
  REQUIRE(barrier.Destroy().ok());
  ExpectWhole(*pool);
}

TEST_CASE("barrier: a party of this node waits in slices; its interruption breaks it") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  ShmBarrier barrier = MustCreateBarrier(*pool, 3);
  absl::StatusOr<BarrierTicket> here = barrier.ArriveHere();
  REQUIRE(here.ok());
  CHECK(here->index == 0);
  // No lease to renew or to lapse: slices long after "now" keep the arrival.
  for (int slice = 0; slice < 3; ++slice) {
    absl::StatusOr<bool> done =
        barrier.AwaitRound(*here, absl::Milliseconds(1), shm_object::MonotonicNow());
    REQUIRE(done.ok());
    CHECK_FALSE(*done);
  }
  CHECK(*barrier.n_waiting() == 1);
  // Another party waits in a child; the first is interrupted: the child's
  // wait fails at once with the cause, and later waits too, until Reset.
  pid_t waiter = ForkChild([&] {
    absl::Status st = barrier.Wait(kLong);
    if (!absl::IsFailedPrecondition(st)) return 1;
    if (!absl::StrContains(st.message(), "party 0 of the round was interrupted by Ctrl-C")) return 2;
    return 0;
  });
  while (*barrier.n_waiting() < 2) usleep(1000);
  const absl::Duration start = shm_object::MonotonicNow();
  REQUIRE(barrier.Interrupt(*here, "was interrupted by Ctrl-C").ok());
  ExpectExit0(waiter);
  CHECK(shm_object::MonotonicNow() - start < absl::Seconds(5));
  CHECK(*barrier.broken());
  CHECK(absl::IsFailedPrecondition(barrier.ArriveHere().status()));
  // Interrupting again, or after the barrier broke for another reason, changes nothing.
  REQUIRE(barrier.Reset().ok());
  // A long reason is kept in part, never cut inside a character ("€" is 3 bytes).
  here = barrier.ArriveHere();
  REQUIRE(here.ok());
  std::string euros = "x";  // so that the cut at 159 bytes falls inside a character
  for (int i = 0; i < 100; ++i) euros += "\xE2\x82\xAC";
  REQUIRE(barrier.Interrupt(*here, euros).ok());
  absl::Status cut = barrier.Wait(kLong);
  REQUIRE(absl::IsFailedPrecondition(cut));
  const std::string text(cut.message());
  const size_t first_euro = text.find("\xE2\x82\xAC");
  REQUIRE(first_euro != std::string::npos);
  CHECK((text.size() - first_euro) % 3 == 0);
  CHECK(text.size() - first_euro < euros.size());
  REQUIRE(barrier.Reset().ok());
  REQUIRE(barrier.Interrupt(*here, "late").ok());
  CHECK_FALSE(*barrier.broken());

  // A round that ended before the interruption stays done.
  here = barrier.ArriveHere();
  REQUIRE(here.ok());
  absl::StatusOr<BarrierTicket> other = barrier.ArriveHere();
  REQUIRE(other.ok());
  CHECK(*barrier.ArriveAndWait(kLong) == 2);
  REQUIRE(barrier.Interrupt(*here, "too late").ok());
  CHECK_FALSE(*barrier.broken());
  CHECK(*barrier.AwaitRound(*here, absl::ZeroDuration(), shm_object::MonotonicNow()));
  CHECK(*barrier.AwaitRound(*other, absl::ZeroDuration(), shm_object::MonotonicNow()));
  REQUIRE(barrier.Destroy().ok());
  ExpectWhole(*pool);
}

}  // namespace
}  // namespace dragon::common::shm_pool_test
