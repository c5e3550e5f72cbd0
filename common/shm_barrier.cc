#include "common/shm_barrier.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <new>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/utf8.h"

namespace dragon::common {
namespace {

// "DRGBARR2": the layout with break reasons and remote parties' slots.
inline constexpr uint64_t kBarrierMagic = 0x3252524142475244;
inline constexpr size_t kWhyBytes = 160;

// Cut on a character boundary: the text ends up in every waiter's error.
void CopyTruncated(char* to, size_t capacity, const std::string& from) {
  const std::string_view kept = Utf8Prefix(from, capacity - 1);
  std::memcpy(to, kept.data(), kept.size());
  to[kept.size()] = '\0';
}

}  // namespace

// A waiter remembers the round (`generation`) and the break count (`breaks`)
// it arrived in: the round moving on means all arrived (even if the barrier
// broke just after), `breaks` moving on means it was broken under it. Each
// field is changed by single stores, so a holder killed between them leaves
// at worst an arrival counted for a dead party, which a timeout then breaks.
struct ShmBarrier::Header {
  std::atomic<uint64_t> magic;
  uint32_t parties;
  int32_t creator_pid;
  uint64_t creator_start;
  pthread_mutex_t mutex;
  std::atomic<uint32_t> sequence;  // futex word: bumped on every round's end and every break
  uint32_t arrived;
  uint64_t generation;
  uint64_t breaks;
  uint32_t broken;
  uint32_t unused;
  char why[kWhyBytes];  // the last break's cause, for every waiter's error
};

// One per arrival index of the current round (the header is followed by
// `parties` of them): who arrived there when it was a remote party.
struct ShmBarrier::Slot {
  int64_t lease_until_ns;  // MonotonicNow; 0: a party of this node (no lease)
  int32_t pid;
  char node[52];
};

ShmBarrier::Slot* ShmBarrier::slots() { return reinterpret_cast<Slot*>(h_ + 1); }

absl::StatusOr<BlockRef> ShmBarrier::Create(ShmPool& pool, uint32_t parties) {
  if (parties == 0) return absl::InvalidArgumentError("a barrier needs at least 1 party");
  const uint64_t bytes = sizeof(Header) + uint64_t{parties} * sizeof(Slot);
  absl::StatusOr<BlockRef> ref = pool.Allocate(bytes);
  if (!ref.ok()) return ref.status();
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(*ref);
  if (!span.ok()) return span.status();
  std::memset(span->data(), 0, bytes);
  Header* h = new (span->data()) Header;
  h->parties = parties;
  h->creator_pid = getpid();
  h->creator_start = shm_object::ProcessStartTime(getpid());
  shm_object::InitRobustMutex(&h->mutex);
  h->magic.store(kBarrierMagic, std::memory_order_release);
  return *ref;
}

absl::StatusOr<ShmBarrier> ShmBarrier::Open(ShmPool& pool, BlockRef ref) {
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(ref);
  if (absl::IsNotFound(span.status())) {
    return absl::NotFoundError("the barrier is gone (destroyed, or its creator exited)");
  }
  if (!span.ok()) return span.status();
  Header* h = reinterpret_cast<Header*>(span->data());
  if (span->size() < sizeof(Header) || h->magic.load(std::memory_order_acquire) != kBarrierMagic ||
      span->size() < sizeof(Header) + uint64_t{h->parties} * sizeof(Slot)) {
    return absl::InvalidArgumentError("that block is not a barrier");
  }
  return ShmBarrier(pool, ref, h);
}

absl::Status ShmBarrier::Lock() {
  bool repaired = false;
  absl::Status locked = shm_object::LockRobust(&h_->mutex, &repaired, "barrier");
  if (!locked.ok()) return locked;
  // Nothing to finish (see Header); the dead one may have been about to wake.
  if (repaired) {
    h_->sequence.fetch_add(1);
    shm_object::FutexWake(&h_->sequence, INT32_MAX);
    shm_object::MarkConsistent(&h_->mutex);
  }
  return absl::OkStatus();
}

void ShmBarrier::Unlock() { shm_object::UnlockRobust(&h_->mutex); }

uint32_t ShmBarrier::parties() const { return h_->parties; }

void ShmBarrier::Break(bool stay_broken, const std::string& why) {
  h_->breaks += 1;
  h_->broken = stay_broken ? 1 : 0;
  h_->arrived = 0;
  CopyTruncated(h_->why, kWhyBytes, why);
  h_->sequence.fetch_add(1, std::memory_order_release);
  shm_object::FutexWake(&h_->sequence, INT32_MAX);
}

absl::Status ShmBarrier::BrokenError() {
  if (h_->why[0] == '\0') return absl::FailedPreconditionError("the barrier is broken");
  return absl::FailedPreconditionError(absl::StrCat("the barrier is broken: ", h_->why));
}

absl::StatusOr<BarrierTicket> ShmBarrier::ArriveLocked(const RemoteParty* party) {
  if (h_->broken != 0) return BrokenError();
  BarrierTicket ticket{h_->generation, h_->breaks, h_->arrived};
  Slot& slot = slots()[ticket.index];
  std::memset(&slot, 0, sizeof(Slot));
  if (party != nullptr) {
    // Never 0 (0 means "no lease"), even for a lease given as long past.
    slot.lease_until_ns = std::max<int64_t>(1, absl::ToInt64Nanoseconds(party->lease_until));
    slot.pid = party->pid;
    CopyTruncated(slot.node, sizeof(slot.node), party->node);
  }
  if (++h_->arrived == h_->parties) {
    h_->arrived = 0;
    h_->generation += 1;
    h_->sequence.fetch_add(1, std::memory_order_release);
    shm_object::FutexWake(&h_->sequence, INT32_MAX);
  }
  return ticket;
}

bool ShmBarrier::BreakOnLapsedLease(absl::Duration now, uint32_t waiting_index) {
  const int64_t now_ns = absl::ToInt64Nanoseconds(now);
  for (uint32_t i = 0; i < h_->arrived; ++i) {
    const Slot& slot = slots()[i];
    if (i == waiting_index || slot.lease_until_ns == 0 || now_ns <= slot.lease_until_ns) continue;
    Break(/*stay_broken=*/true,
          absl::StrCat("party ", i, " of the round, process ", slot.pid, " of node ", slot.node,
                       ", stopped waiting: its lease ran out ",
                       absl::FormatDuration(absl::Trunc(
                           absl::Nanoseconds(now_ns - slot.lease_until_ns), absl::Milliseconds(1))),
                       " ago (it exited, or its node or agent was lost)"));
    return true;
  }
  return false;
}

absl::Status ShmBarrier::AwaitLocked(const BarrierTicket& ticket, absl::Duration until) {
  absl::Duration next_check = shm_object::MonotonicNow() + shm_object::kLivenessInterval;
  for (;;) {
    if (h_->generation != ticket.generation) {
      Unlock();
      return absl::OkStatus();
    }
    if (h_->breaks != ticket.breaks ||
        BreakOnLapsedLease(shm_object::MonotonicNow(), ticket.index)) {
      absl::Status broken = BrokenError();
      Unlock();
      return broken;
    }
    if (shm_object::MonotonicNow() >= until) {
      Unlock();
      return absl::DeadlineExceededError("the round is still open");
    }
    const uint32_t seen = h_->sequence.load(std::memory_order_acquire);
    Unlock();
    if (!shm_object::SpinWhileEqual(h_->sequence, seen, shm_object::kSpinBeforeSleep)) {
      shm_object::FutexWait(&h_->sequence, seen, std::min(until, next_check));
    }
    if (h_->magic.load(std::memory_order_acquire) != kBarrierMagic) {
      return absl::NotFoundError("the barrier is gone (destroyed, or its creator exited)");
    }
    absl::Status alive = absl::OkStatus();
    const absl::Duration now = shm_object::MonotonicNow();
    if (now >= next_check) {
      next_check = now + shm_object::kLivenessInterval;
      alive = shm_object::CheckAlive(*pool_, ref_, "barrier", h_->creator_pid, h_->creator_start,
                                     0);
      if (absl::IsNotFound(alive)) return alive;  // its lock is no longer ours to take
    }
    if (absl::Status locked = Lock(); !locked.ok()) return locked;
    if (!alive.ok() && h_->generation == ticket.generation) {
      Break(/*stay_broken=*/true, std::string(alive.message()));
      Unlock();
      return alive;
    }
  }
}

absl::Status ShmBarrier::Wait(absl::Duration timeout) { return ArriveAndWait(timeout).status(); }

absl::StatusOr<uint32_t> ShmBarrier::ArriveAndWait(absl::Duration timeout) {
  const absl::Duration deadline = shm_object::MonotonicNow() + timeout;
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::StatusOr<BarrierTicket> ticket = ArriveLocked(nullptr);
  if (!ticket.ok()) {
    Unlock();
    return ticket.status();
  }
  absl::Status done = AwaitLocked(*ticket, deadline);
  if (absl::IsDeadlineExceeded(done)) done = GiveUp(*ticket, timeout);
  if (!done.ok()) return done;
  return ticket->index;
}

absl::StatusOr<BarrierTicket> ShmBarrier::Arrive(const RemoteParty& party) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::StatusOr<BarrierTicket> ticket = ArriveLocked(&party);
  Unlock();
  return ticket;
}

absl::StatusOr<BarrierTicket> ShmBarrier::ArriveHere() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::StatusOr<BarrierTicket> ticket = ArriveLocked(nullptr);
  Unlock();
  return ticket;
}

absl::StatusOr<bool> ShmBarrier::AwaitRound(const BarrierTicket& ticket, absl::Duration wait,
                                            absl::Duration lease_until) {
  const absl::Duration until = shm_object::MonotonicNow() + wait;
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  if (h_->generation == ticket.generation && h_->breaks == ticket.breaks &&
      ticket.index < h_->arrived && slots()[ticket.index].lease_until_ns != 0) {
    slots()[ticket.index].lease_until_ns =
        std::max<int64_t>(1, absl::ToInt64Nanoseconds(lease_until));
  }
  absl::Status done = AwaitLocked(ticket, until);
  if (absl::IsDeadlineExceeded(done)) return false;
  if (!done.ok()) return done;
  return true;
}

absl::Status ShmBarrier::GiveUp(const BarrierTicket& ticket, absl::Duration timeout) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::Status outcome = absl::OkStatus();
  if (h_->generation != ticket.generation) {
    // All arrived just as the time ran out: the round is done after all.
  } else if (h_->breaks != ticket.breaks) {
    outcome = BrokenError();
  } else {
    Break(/*stay_broken=*/true,
          absl::StrCat("party ", ticket.index, " of the round timed out after ",
                       absl::FormatDuration(timeout), " with ", h_->arrived, " of ", h_->parties,
                       " parties arrived"));
    outcome = absl::DeadlineExceededError(
        absl::StrCat("barrier of ", h_->parties, " parties: not all arrived within ",
                     absl::FormatDuration(timeout), "; it is broken now"));
  }
  Unlock();
  return outcome;
}

absl::Status ShmBarrier::Interrupt(const BarrierTicket& ticket, const std::string& why) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  if (h_->generation == ticket.generation && h_->breaks == ticket.breaks) {
    Break(/*stay_broken=*/true, absl::StrCat("party ", ticket.index, " of the round ", why));
  }
  Unlock();
  return absl::OkStatus();
}

absl::Status ShmBarrier::Abort() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  Break(/*stay_broken=*/true, "abort() was called");
  Unlock();
  return absl::OkStatus();
}

absl::Status ShmBarrier::Reset() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  Break(/*stay_broken=*/false, "reset() was called while it waited");
  Unlock();
  return absl::OkStatus();
}

absl::Status ShmBarrier::Destroy() {
  if (getpid() != h_->creator_pid) {
    return absl::FailedPreconditionError(
        absl::StrCat("only the barrier's creator (pid ", h_->creator_pid, ") destroys it"));
  }
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  Break(/*stay_broken=*/true, "it was destroyed");
  h_->magic.store(0, std::memory_order_release);
  Unlock();
  return pool_->Free(ref_);
}

absl::StatusOr<uint32_t> ShmBarrier::n_waiting() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  const uint32_t arrived = h_->arrived;
  Unlock();
  return arrived;
}

absl::StatusOr<bool> ShmBarrier::broken() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  const bool broken = h_->broken != 0;
  Unlock();
  return broken;
}

}  // namespace dragon::common
