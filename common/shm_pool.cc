#include "common/shm_pool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/shm_pool_layout.h"

// The operations on a mapped pool (creating and attaching it are in
// shm_pool_files.cc).
namespace dragon::common {
namespace {

// The Allocate deadline runs on the monotonic clock, the one FUTEX_WAIT_BITSET
// takes absolute timeouts on: a wall-clock step neither cuts nor stretches it.
absl::Duration MonotonicNow() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return absl::DurationFromTimespec(now);
}

}  // namespace

pid_t ShmPool::creator_pid() const { return header()->creator_pid; }

absl::Status ShmPool::Lock() {
  const int locked = pthread_mutex_lock(&header()->mutex);
  if (locked == 0) return absl::OkStatus();
  if (locked == EOWNERDEAD) {
    // We hold the mutex, and the allocator is as its last holder left it:
    // Rebuild recomputes everything that step might have half-written (see
    // buddy_allocator.cc for why the unit table itself is always whole).
    absl::Status rebuilt = allocator_.Rebuild();
    if (!rebuilt.ok()) {
      // Unlocked without pthread_mutex_consistent: every later Lock, in any
      // process, gets ENOTRECOVERABLE instead of a pool that cannot be trusted.
      pthread_mutex_unlock(&header()->mutex);
      return absl::DataLossError(absl::StrCat("shared-memory pool ", path_,
                                              " is damaged after a process died using it: ",
                                              rebuilt.message()));
    }
    header()->DropDeadWaiters();
    header()->repairs += 1;
    pthread_mutex_consistent(&header()->mutex);
    // The dead process may have freed space without waking anyone.
    WakeWaiters();
    return absl::OkStatus();
  }
  if (locked == ENOTRECOVERABLE) {
    return absl::DataLossError(absl::StrCat("shared-memory pool ", path_,
                                            " is damaged after a process died using it"));
  }
  return absl::InternalError(
      absl::StrCat("cannot lock shared-memory pool ", path_, ": ", strerror(locked)));
}

void ShmPool::Unlock() { pthread_mutex_unlock(&header()->mutex); }

void ShmPool::WakeWaiters() {
  header()->wake_sequence.fetch_add(1, std::memory_order_release);
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&header()->wake_sequence), FUTEX_WAKE, INT_MAX,
          nullptr, nullptr, 0);
}

absl::Status ShmPool::WithPath(const absl::Status& status) const {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat("shared-memory pool ", path_, ": ", status.message()));
}

std::string ShmPool::Describe(const BuddyStats& stats) const {
  return absl::StrCat("pool ", path_, " of ", stats.capacity_bytes, " bytes, ", stats.free_bytes,
                      " bytes free, largest free block ", stats.largest_free_block,
                      " bytes; the pool size is set by dragon-agent's ", kShmPoolSizeOption,
                      " option");
}

absl::StatusOr<BlockRef> ShmPool::Allocate(uint64_t size, absl::Duration wait) {
  if (size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot allocate 0 bytes from shared-memory pool ", path_));
  }
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  if (allocator_.BlockBytes(size) == 0) {
    const BuddyStats stats = allocator_.Stats();
    Unlock();
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate ", size, " bytes: larger than the largest block of ",
        allocator_.largest_possible_block(), " bytes in ", Describe(stats)));
  }
  const pid_t self = getpid();
  const absl::Duration deadline = MonotonicNow() + wait;
  for (;;) {
    if (std::optional<BlockRef> ref = allocator_.Allocate(size, self)) {
      Unlock();
      return *ref;
    }
    if (MonotonicNow() >= deadline) {
      const BuddyStats stats = allocator_.Stats();
      Unlock();
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", size, " bytes within ", absl::FormatDuration(wait),
                       ": no free block that large in ", Describe(stats)));
    }
    const uint32_t seen = header()->wake_sequence.load(std::memory_order_acquire);
    header()->AddWaiter(self);
    Unlock();
    timespec until;
    if (deadline != absl::InfiniteDuration()) until = absl::ToTimespec(deadline);
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&header()->wake_sequence), FUTEX_WAIT_BITSET,
            seen, deadline == absl::InfiniteDuration() ? nullptr : &until, nullptr,
            FUTEX_BITSET_MATCH_ANY);
    if (absl::Status locked = Lock(); !locked.ok()) return locked;
    header()->RemoveWaiter(self);
  }
}

absl::Status ShmPool::Free(const BlockRef& ref) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::Status freed = allocator_.Free(ref);
  if (freed.ok() && header()->Waiters() > 0) WakeWaiters();
  Unlock();
  return WithPath(freed);
}

absl::StatusOr<absl::Span<char>> ShmPool::Resolve(const BlockRef& ref) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::Status valid = allocator_.Check(ref);
  Unlock();
  if (!valid.ok()) return WithPath(valid);
  return absl::Span<char>(data_ + ref.offset, ref.length);
}

absl::Status ShmPool::SetOwner(const BlockRef& ref, pid_t owner) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::Status set = allocator_.SetOwner(ref, owner);
  Unlock();
  return WithPath(set);
}

absl::StatusOr<uint64_t> ShmPool::ReclaimOwner(pid_t owner) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  const uint64_t freed = allocator_.ReclaimOwner(owner);
  header()->DropWaiters(owner);
  if (freed > 0 && header()->Waiters() > 0) WakeWaiters();
  Unlock();
  return freed;
}

absl::StatusOr<ShmPoolStats> ShmPool::Stats() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  const BuddyStats buddy = allocator_.Stats();
  ShmPoolStats stats;
  stats.capacity_bytes = buddy.capacity_bytes;
  stats.free_bytes = buddy.free_bytes;
  stats.blocks_in_use = buddy.blocks_in_use;
  stats.largest_free_block = buddy.largest_free_block;
  stats.largest_possible_block = allocator_.largest_possible_block();
  stats.waiters = header()->Waiters();
  stats.repairs = header()->repairs;
  Unlock();
  return stats;
}

}  // namespace dragon::common
