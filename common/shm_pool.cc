#include "common/shm_pool.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
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

// flags is a plain field written once at creation; this bit is added later
// while other processes may read it, hence the atomic builtins.
void ShmPool::MarkCreatorReady() {
  __atomic_fetch_or(&header()->flags, shm_pool_internal::kCreatorReadyFlag, __ATOMIC_RELEASE);
}

bool ShmPool::creator_ready() const {
  return (__atomic_load_n(&header()->flags, __ATOMIC_ACQUIRE) &
          shm_pool_internal::kCreatorReadyFlag) != 0;
}

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

absl::StatusOr<BlockRef> ShmPool::Allocate(uint64_t size, absl::Duration wait, pid_t owner) {
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
  if (owner == 0) owner = self;
  const absl::Duration deadline = MonotonicNow() + wait;
  for (;;) {
    if (std::optional<BlockRef> ref = allocator_.Allocate(size, owner)) {
      const uint64_t block_bytes = allocator_.BlockBytes(size);
      Unlock();
      if (!reserved_) {
        if (absl::Status reserved = ReserveBlock(*ref, size, block_bytes); !reserved.ok()) {
          return reserved;
        }
      }
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

// Outside the mutex: fallocate of megabytes the first time takes a while,
// and nobody else can free this block or hand it out before its reference
// is returned. Reserving a range twice (a block reused) costs only the check
// that its pages exist.
absl::Status ShmPool::ReserveBlock(const BlockRef& ref, uint64_t size, uint64_t block_bytes) {
  // A block covers whole aligned power-of-two runs of units, so each word of
  // the map is either wholly in it or holds all of it.
  const uint64_t first = ref.offset / allocator_.unit_bytes();
  const uint64_t units = block_bytes / allocator_.unit_bytes();
  const uint64_t mask = units >= 64 ? ~uint64_t{0} : ((uint64_t{1} << units) - 1) << (first % 64);
  const uint64_t words = (units + 63) / 64;
  std::atomic<uint64_t>* map = backed_ + first / 64;
  // Relaxed: a bit stands for the kernel's state (the pages exist), which
  // fallocate made true for every process before the bit was set.
  bool backed = true;
  for (uint64_t w = 0; w < words && backed; ++w) {
    backed = (map[w].load(std::memory_order_relaxed) & mask) == mask;
  }
  if (backed) return absl::OkStatus();
  const off_t at = static_cast<off_t>(header()->data_offset + ref.offset);
  int result;
  do {
    result = fallocate(fd_, 0, at, static_cast<off_t>(block_bytes));
  } while (result != 0 && errno == EINTR);  // tmpfs stops at a pending signal
  if (result == 0 || errno == EOPNOTSUPP) {
    for (uint64_t w = 0; w < words; ++w) map[w].fetch_or(mask, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  const int err = errno;
  // The block goes back: nobody saw it. (Were the lock lost to a dead
  // process's damage, the block stays allocated to its owner.)
  if (Lock().ok()) {
    if (allocator_.Free(ref).ok() && header()->Waiters() > 0) WakeWaiters();
    Unlock();
  }
  const size_t slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path_.substr(0, slash);
  return absl::ResourceExhaustedError(absl::StrCat(
      "cannot allocate ", size, " bytes: reserving its block of ", block_bytes, " bytes in pool ",
      path_, " failed: ", strerror(err), shm_pool_internal::FreeSpaceOf(dir),
      "; lower dragon-agent's ", kShmPoolSizeOption, " or make ", dir, " larger"));
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
  MapPages(ref);
  return absl::Span<char>(data_ + ref.offset, ref.length);
}

// A process that first touches a block's pages takes a page fault per 4 KiB
// (64 MiB: 16,384 faults, ~50 ms, more than the copy itself); one
// MADV_POPULATE_WRITE maps the whole range in a single call. The pages exist
// (fallocated when the block was allocated, or at creation), so this adds no
// memory. Each process remembers what it has mapped: blocks are reused, and
// from then on their pages stay in its page tables.
void ShmPool::MapPages(const BlockRef& ref) {
#ifdef MADV_POPULATE_WRITE
  if (ref.length == 0 || mapped_ == nullptr) return;
  const uint64_t unit = allocator_.unit_bytes();
  const uint64_t first = ref.offset / unit;
  const uint64_t last = (ref.offset + ref.length - 1) / unit;
  bool mapped = true;
  for (uint64_t u = first; u <= last && mapped; ++u) {
    mapped = (mapped_[u / 64].load(std::memory_order_relaxed) >> (u % 64)) & 1;
  }
  if (mapped) return;
  if (madvise(data_ + first * unit, (last - first + 1) * unit, MADV_POPULATE_WRITE) != 0) {
    return;  // a hint: the pages fault in one by one instead
  }
  for (uint64_t u = first; u <= last; ++u) {
    mapped_[u / 64].fetch_or(uint64_t{1} << (u % 64), std::memory_order_relaxed);
  }
#else
  (void)ref;
#endif
}

absl::Status ShmPool::SetOwner(const BlockRef& ref, pid_t owner) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::Status set = allocator_.SetOwner(ref, owner);
  Unlock();
  return WithPath(set);
}

absl::StatusOr<bool> ShmPool::FreeIfOwner(const BlockRef& ref, pid_t owner) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::StatusOr<int32_t> actual = allocator_.Owner(ref);
  if (!actual.ok()) {
    Unlock();
    // NotFound is a stale reference (its generation moved on); a forged one
    // is out of range or of a length its block does not have.
    if (absl::IsNotFound(actual.status())) return false;
    return WithPath(actual.status());
  }
  if (*actual != owner) {
    Unlock();
    return false;
  }
  absl::Status freed = allocator_.Free(ref);
  if (freed.ok() && header()->Waiters() > 0) WakeWaiters();
  Unlock();
  if (!freed.ok()) return WithPath(freed);
  return true;
}

absl::Status ShmPool::TransferOwner(const BlockRef& ref, pid_t from, pid_t to) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::StatusOr<int32_t> actual = allocator_.Owner(ref);
  absl::Status result = actual.status();
  if (actual.ok() && *actual != from) {
    result = absl::FailedPreconditionError(absl::StrCat(
        "block at offset ", ref.offset, " (length ", ref.length, ", generation ", ref.generation,
        ") is owned by pid ", *actual, ", not by pid ", from, ": not handed to pid ", to));
  } else if (actual.ok()) {
    result = allocator_.SetOwner(ref, to);
  }
  Unlock();
  return WithPath(result);
}

absl::StatusOr<std::vector<pid_t>> ShmPool::Owners() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  const std::vector<int32_t> owners = allocator_.Owners();
  Unlock();
  return std::vector<pid_t>(owners.begin(), owners.end());
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
