#include "common/shm_barrier.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

namespace dragon::common {
namespace {

inline constexpr uint64_t kBarrierMagic = 0x5252414252474452;  // "DRGBARRR"

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
};

absl::StatusOr<BlockRef> ShmBarrier::Create(ShmPool& pool, uint32_t parties) {
  if (parties == 0) return absl::InvalidArgumentError("a barrier needs at least 1 party");
  absl::StatusOr<BlockRef> ref = pool.Allocate(sizeof(Header));
  if (!ref.ok()) return ref.status();
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(*ref);
  if (!span.ok()) return span.status();
  std::memset(span->data(), 0, sizeof(Header));
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
  if (span->size() < sizeof(Header) || h->magic.load(std::memory_order_acquire) != kBarrierMagic) {
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

void ShmBarrier::Break(bool stay_broken) {
  h_->breaks += 1;
  h_->broken = stay_broken ? 1 : 0;
  h_->arrived = 0;
  h_->sequence.fetch_add(1, std::memory_order_release);
  shm_object::FutexWake(&h_->sequence, INT32_MAX);
}

absl::Status ShmBarrier::Wait(absl::Duration timeout) {
  const absl::Duration start = shm_object::MonotonicNow();
  const absl::Duration deadline = start + timeout;
  const absl::Status broken = absl::FailedPreconditionError("the barrier is broken");
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  if (h_->broken != 0) {
    Unlock();
    return broken;
  }
  const uint64_t generation = h_->generation;
  const uint64_t breaks = h_->breaks;
  if (++h_->arrived == h_->parties) {
    h_->arrived = 0;
    h_->generation = generation + 1;
    h_->sequence.fetch_add(1, std::memory_order_release);
    Unlock();
    shm_object::FutexWake(&h_->sequence, INT32_MAX);
    return absl::OkStatus();
  }
  absl::Duration next_check = start + shm_object::kLivenessInterval;
  for (;;) {
    const uint32_t seen = h_->sequence.load(std::memory_order_acquire);
    Unlock();
    if (!shm_object::SpinWhileEqual(h_->sequence, seen, shm_object::kSpinBeforeSleep)) {
      shm_object::FutexWait(&h_->sequence, seen, std::min(deadline, next_check));
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
    if (h_->generation != generation) break;
    if (h_->breaks != breaks) {
      Unlock();
      return broken;
    }
    if (!alive.ok() || now >= deadline) {
      Break(/*stay_broken=*/true);
      Unlock();
      if (!alive.ok()) return alive;
      return absl::DeadlineExceededError(absl::StrCat(
          "barrier of ", h_->parties, " parties: not all arrived within ",
          absl::FormatDuration(timeout), "; it is broken now"));
    }
  }
  Unlock();
  return absl::OkStatus();
}

absl::Status ShmBarrier::Abort() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  Break(/*stay_broken=*/true);
  Unlock();
  return absl::OkStatus();
}

absl::Status ShmBarrier::Reset() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  Break(/*stay_broken=*/false);
  Unlock();
  return absl::OkStatus();
}

absl::Status ShmBarrier::Destroy() {
  if (getpid() != h_->creator_pid) {
    return absl::FailedPreconditionError(
        absl::StrCat("only the barrier's creator (pid ", h_->creator_pid, ") destroys it"));
  }
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  Break(/*stay_broken=*/true);
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
