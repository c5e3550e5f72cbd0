#include "common/shm_channel.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

namespace dragon::common {
namespace {

inline constexpr uint64_t kChannelMagic = 0x4c4e48434e474452;  // "DRGNCHNL"

// /proc/<pid>/stat: the state (field 3) and start time (field 22). Plain
// read(2): a waiter checks this every 100 ms.
bool ReadStat(pid_t pid, char* state, uint64_t* start) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char text[1024];
  const ssize_t n = read(fd, text, sizeof(text) - 1);
  close(fd);
  if (n <= 0) return false;
  text[n] = '\0';
  const char* at = strrchr(text, ')');  // the command name may hold spaces and ')'
  if (at == nullptr || at[1] != ' ') return false;
  *state = at[2];
  at += 2;
  for (int field = 3; field < 22; ++field) {  // to the space before field 22
    at = strchr(at, ' ');
    if (at == nullptr) return false;
    ++at;
  }
  *start = strtoull(at, nullptr, 10);
  return true;
}

}  // namespace

// Why the ring survives a process killed at any instruction while holding
// the lock: `head` and `tail` count messages popped and pushed ever (the
// count is their difference, never stored on its own), each changed by one
// 64-bit store that is the operation's commit point, and a slot's `full`
// says whether it holds a message nobody took yet. A send writes the slot
// (block, size, full=1), hands the block to the creator, then stores tail+1;
// a receive takes the block over, clears `full`, then stores head+1. So a
// half-done step is always one of two states, which Repair finishes: a full
// slot at `tail` (a send that had not committed) and an empty slot at `head`
// (a receive that had not committed).
struct ShmChannel::Slot {
  BlockRef block;
  uint64_t size;
  std::atomic<uint64_t> full;
};

struct ShmChannel::Header {
  std::atomic<uint64_t> magic;  // kChannelMagic once initialized; 0 once destroyed
  uint32_t capacity;
  int32_t creator_pid;
  uint64_t creator_start;
  pthread_mutex_t mutex;
  std::atomic<uint32_t> not_empty;  // futex words, bumped after a push / a pop
  std::atomic<uint32_t> not_full;
  std::atomic<uint32_t> closed;
  // Waiters (only to skip the wake-up syscall when nobody sleeps: a count
  // left high by a killed waiter costs a syscall, never a lost wake-up).
  uint32_t receivers_waiting;
  uint32_t senders_waiting;
  uint32_t unused;
  std::atomic<uint64_t> head;
  std::atomic<uint64_t> tail;
  uint64_t repairs;
};
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex words");

uint64_t ShmChannel::SlotsOffset() { return (sizeof(Header) + 63) / 64 * 64; }

ShmChannel::Slot* ShmChannel::slots() const {
  return reinterpret_cast<Slot*>(reinterpret_cast<char*>(h_) + SlotsOffset());
}

pid_t ShmChannel::creator_pid() const { return h_->creator_pid; }

absl::StatusOr<BlockRef> ShmChannel::Create(ShmPool& pool, uint32_t capacity) {
  if (capacity == 0) return absl::InvalidArgumentError("a channel needs a capacity of at least 1");
  const uint64_t bytes = SlotsOffset() + uint64_t{capacity} * sizeof(Slot);
  absl::StatusOr<BlockRef> ref = pool.Allocate(bytes);
  if (!ref.ok()) return ref.status();
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(*ref);
  if (!span.ok()) return span.status();
  std::memset(span->data(), 0, bytes);
  Header* h = new (span->data()) Header;
  h->capacity = capacity;
  h->creator_pid = getpid();
  h->creator_start = shm_object::ProcessStartTime(getpid());
  shm_object::InitRobustMutex(&h->mutex);
  // Last, with release: a process that Opens the ref sees the rest written.
  h->magic.store(kChannelMagic, std::memory_order_release);
  return *ref;
}

absl::StatusOr<ShmChannel> ShmChannel::Open(ShmPool& pool, BlockRef ref) {
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(ref);
  if (absl::IsNotFound(span.status())) {
    return absl::NotFoundError("the channel is gone (closed, or its creator exited)");
  }
  if (!span.ok()) return span.status();
  Header* h = reinterpret_cast<Header*>(span->data());
  if (span->size() < SlotsOffset() || h->magic.load(std::memory_order_acquire) != kChannelMagic ||
      span->size() < SlotsOffset() + uint64_t{h->capacity} * sizeof(Slot)) {
    return absl::InvalidArgumentError("that block is not a channel");
  }
  return ShmChannel(pool, ref, h);
}

absl::Status ShmChannel::Lock() {
  bool repaired = false;
  absl::Status locked = shm_object::LockRobust(&h_->mutex, &repaired, "channel");
  if (!locked.ok()) return locked;
  if (repaired) {
    Repair();
    shm_object::MarkConsistent(&h_->mutex);
  }
  return absl::OkStatus();
}

void ShmChannel::Unlock() { shm_object::UnlockRobust(&h_->mutex); }

void ShmChannel::Repair() {
  const uint64_t head = h_->head.load(std::memory_order_relaxed);
  const uint64_t tail = h_->tail.load(std::memory_order_relaxed);
  const uint32_t cap = h_->capacity;
  if (head != tail && slots()[head % cap].full.load(std::memory_order_relaxed) == 0) {
    // A receiver took the message over and cleared its slot: finish its pop.
    h_->head.store(head + 1, std::memory_order_release);
  } else if (tail - head < cap) {
    Slot& slot = slots()[tail % cap];
    if (slot.full.load(std::memory_order_relaxed) != 0) {
      // A sender that died before its commit. Once the block is the
      // creator's (the transfer is the check), the message is whole: publish
      // it. Otherwise it is still the dead sender's, for the janitor.
      const pid_t creator = h_->creator_pid;
      if (pool_->TransferOwner(slot.block, creator, creator).ok()) {
        h_->tail.store(tail + 1, std::memory_order_release);
      } else {
        slot.full.store(0, std::memory_order_relaxed);
      }
    }
  }
  h_->repairs += 1;
  // The dead one may have been about to wake someone.
  h_->not_empty.fetch_add(1);
  h_->not_full.fetch_add(1);
  shm_object::FutexWake(&h_->not_empty, INT32_MAX);
  shm_object::FutexWake(&h_->not_full, INT32_MAX);
}

absl::Status ShmChannel::WaitOn(std::atomic<uint32_t>& word, uint32_t seen,
                                absl::Duration deadline, absl::Duration& next_check, pid_t peer) {
  if (!shm_object::SpinWhileEqual(word, seen, shm_object::kSpinBeforeSleep)) {
    shm_object::FutexWait(&word, seen, std::min(deadline, next_check));
  }
  // A destroyed channel: its lock may be someone else's data by now.
  if (h_->magic.load(std::memory_order_acquire) != kChannelMagic) {
    return absl::NotFoundError("the channel is gone (closed, or its creator exited)");
  }
  const absl::Duration now = shm_object::MonotonicNow();
  if (now < next_check) return absl::OkStatus();
  next_check = now + shm_object::kLivenessInterval;
  return shm_object::CheckAlive(*pool_, ref_, "channel", h_->creator_pid, h_->creator_start,
                                peer);
}

absl::Status ShmChannel::Send(absl::Span<const char> bytes, absl::Duration timeout, pid_t peer) {
  const absl::Duration start = shm_object::MonotonicNow();
  const absl::Duration deadline = start + timeout;
  const pid_t self = getpid();
  if (h_->closed.load(std::memory_order_acquire) != 0) {
    return absl::FailedPreconditionError("the channel is closed");
  }
  // The block first, outside the channel's lock: allocating may wait for
  // pool space, and copying a large message takes a while.
  absl::StatusOr<BlockRef> block = pool_->Allocate(std::max<uint64_t>(bytes.size(), 1), timeout);
  if (!block.ok()) {
    if (!absl::IsResourceExhausted(block.status())) return block.status();
    return absl::ResourceExhaustedError(absl::StrCat("channel message of ", bytes.size(),
                                                     " bytes: ", block.status().message()));
  }
  absl::StatusOr<absl::Span<char>> to = pool_->Resolve(*block);
  if (!to.ok()) return to.status();
  if (!bytes.empty()) std::memcpy(to->data(), bytes.data(), bytes.size());

  auto fail = [&](absl::Status status) {
    (void)pool_->FreeIfOwner(*block, self);
    return status;
  };
  if (absl::Status locked = Lock(); !locked.ok()) return fail(locked);
  absl::Duration next_check = start + shm_object::kLivenessInterval;
  const uint32_t cap = h_->capacity;
  for (;;) {
    if (h_->closed.load(std::memory_order_relaxed) != 0) {
      Unlock();
      return fail(absl::FailedPreconditionError("the channel is closed"));
    }
    if (h_->tail.load(std::memory_order_relaxed) - h_->head.load(std::memory_order_relaxed) < cap) {
      break;
    }
    if (shm_object::MonotonicNow() >= deadline) {
      Unlock();
      return fail(absl::DeadlineExceededError(
          absl::StrCat("channel full for ", absl::FormatDuration(timeout))));
    }
    const uint32_t seen = h_->not_full.load(std::memory_order_acquire);
    h_->senders_waiting += 1;
    Unlock();
    absl::Status alive = WaitOn(h_->not_full, seen, deadline, next_check, peer);
    if (absl::IsNotFound(alive)) return fail(alive);  // no lock to take any more
    if (absl::Status locked = Lock(); !locked.ok()) return fail(locked);
    h_->senders_waiting -= 1;
    if (!alive.ok()) {
      Unlock();
      return fail(alive);
    }
  }
  // The commit order Repair relies on (see Slot): stage, then one store.
  const uint64_t tail = h_->tail.load(std::memory_order_relaxed);
  if (absl::Status staged = StageSend(*block, bytes.size()); !staged.ok()) {
    Unlock();
    return fail(staged);
  }
  h_->tail.store(tail + 1, std::memory_order_release);
  const bool wake = h_->receivers_waiting > 0;
  Unlock();
  // After unlocking: a receiver that read the word before our push sees it
  // changed and does not sleep; one that locks after our push sees the message.
  h_->not_empty.fetch_add(1, std::memory_order_release);
  if (wake) shm_object::FutexWake(&h_->not_empty, 1);
  return absl::OkStatus();
}

absl::Status ShmChannel::StageSend(const BlockRef& block, uint64_t size) {
  Slot& slot = slots()[h_->tail.load(std::memory_order_relaxed) % h_->capacity];
  slot.block = block;
  slot.size = size;
  slot.full.store(1, std::memory_order_release);
  absl::Status moved = pool_->TransferOwner(block, getpid(), h_->creator_pid);
  if (!moved.ok()) slot.full.store(0, std::memory_order_relaxed);
  return moved;
}

absl::Status ShmChannel::TakeHead(ShmMessage& message) {
  Slot& slot = slots()[h_->head.load(std::memory_order_relaxed) % h_->capacity];
  message = ShmMessage{slot.block, slot.size};
  if (slot.full.load(std::memory_order_acquire) == 0) {
    return absl::NotFoundError("an empty slot");  // a pop Repair did not see finished
  }
  absl::Status taken = pool_->TransferOwner(message.block, h_->creator_pid, getpid());
  // A hard error of the pool leaves the message queued; a stale block, or
  // one a receiver killed before its commit took over, is dropped.
  if (taken.ok() || absl::IsFailedPrecondition(taken) || absl::IsNotFound(taken)) {
    slot.full.store(0, std::memory_order_relaxed);
  }
  return taken;
}

absl::StatusOr<ShmMessage> ShmChannel::Receive(absl::Duration timeout, pid_t peer) {
  const absl::Duration start = shm_object::MonotonicNow();
  const absl::Duration deadline = start + timeout;
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::Duration next_check = start + shm_object::kLivenessInterval;
  for (;;) {
    uint64_t head = h_->head.load(std::memory_order_relaxed);
    while (head != h_->tail.load(std::memory_order_relaxed)) {
      ShmMessage message;
      absl::Status taken = TakeHead(message);
      if (!taken.ok() && !absl::IsFailedPrecondition(taken) && !absl::IsNotFound(taken)) {
        Unlock();  // the pool itself failed: leave the message queued
        return taken;
      }
      // The commit (see Slot).
      h_->head.store(++head, std::memory_order_release);
      // A failed transfer: a receiver killed between taking the message over
      // and its commit left it here; it was that receiver's, skip it.
      if (!taken.ok()) continue;
      const bool wake = h_->senders_waiting > 0;
      Unlock();
      h_->not_full.fetch_add(1, std::memory_order_release);
      if (wake) shm_object::FutexWake(&h_->not_full, 1);
      return message;
    }
    if (h_->closed.load(std::memory_order_relaxed) != 0) {
      Unlock();
      return absl::OutOfRangeError("the channel is closed and drained");
    }
    if (shm_object::MonotonicNow() >= deadline) {
      Unlock();
      return absl::DeadlineExceededError(
          absl::StrCat("no message within ", absl::FormatDuration(timeout)));
    }
    const uint32_t seen = h_->not_empty.load(std::memory_order_acquire);
    h_->receivers_waiting += 1;
    Unlock();
    absl::Status alive = WaitOn(h_->not_empty, seen, deadline, next_check, peer);
    if (absl::IsNotFound(alive)) return alive;
    if (absl::Status locked = Lock(); !locked.ok()) return locked;
    h_->receivers_waiting -= 1;
    if (!alive.ok()) {
      Unlock();
      return alive;
    }
  }
}

absl::Status ShmChannel::ReceiveInto(std::string& out, absl::Duration timeout, pid_t peer) {
  absl::StatusOr<ShmMessage> message = Receive(timeout, peer);
  if (!message.ok()) return message.status();
  absl::StatusOr<absl::Span<char>> from = pool_->Resolve(message->block);
  if (!from.ok()) return from.status();
  out.assign(from->data(), message->size);
  return pool_->Free(message->block);
}

absl::Status ShmChannel::Close() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  h_->closed.store(1, std::memory_order_release);
  Unlock();
  h_->not_empty.fetch_add(1, std::memory_order_release);
  h_->not_full.fetch_add(1, std::memory_order_release);
  shm_object::FutexWake(&h_->not_empty, INT32_MAX);
  shm_object::FutexWake(&h_->not_full, INT32_MAX);
  return absl::OkStatus();
}

absl::Status ShmChannel::Destroy() {
  if (getpid() != h_->creator_pid) {
    return absl::FailedPreconditionError(
        absl::StrCat("only the channel's creator (pid ", h_->creator_pid, ") destroys it"));
  }
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  h_->closed.store(1, std::memory_order_release);
  const uint64_t tail = h_->tail.load(std::memory_order_relaxed);
  for (uint64_t at = h_->head.load(std::memory_order_relaxed); at != tail; ++at) {
    Slot& slot = slots()[at % h_->capacity];
    if (slot.full.load(std::memory_order_relaxed) != 0) {
      (void)pool_->FreeIfOwner(slot.block, h_->creator_pid);
    }
  }
  // Waiters check the magic on waking, before they touch the lock again.
  h_->magic.store(0, std::memory_order_release);
  Unlock();
  h_->not_empty.fetch_add(1, std::memory_order_release);
  h_->not_full.fetch_add(1, std::memory_order_release);
  shm_object::FutexWake(&h_->not_empty, INT32_MAX);
  shm_object::FutexWake(&h_->not_full, INT32_MAX);
  return pool_->Free(ref_);
}

absl::StatusOr<ShmChannelStats> ShmChannel::Stats() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  ShmChannelStats stats;
  stats.count = h_->tail.load(std::memory_order_relaxed) - h_->head.load(std::memory_order_relaxed);
  stats.capacity = h_->capacity;
  stats.closed = h_->closed.load(std::memory_order_relaxed) != 0;
  stats.repairs = h_->repairs;
  Unlock();
  return stats;
}

// What ShmBarrier shares.
namespace shm_object {

uint64_t ProcessStartTime(pid_t pid) {
  char state = 0;
  uint64_t start = 0;
  return ReadStat(pid, &state, &start) ? start : 0;
}

bool ProcessRuns(pid_t pid, uint64_t start_time) {
  char state = 0;
  uint64_t start = 0;
  if (pid <= 0 || !ReadStat(pid, &state, &start)) return false;
  // A zombie has exited: its parent may be the very process waiting here.
  if (state == 'Z' || state == 'X') return false;
  return start_time == 0 || start == start_time;
}

absl::Duration MonotonicNow() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return absl::DurationFromTimespec(now);
}

void FutexWait(const void* word, uint32_t seen, absl::Duration until) {
  // Absolute on the monotonic clock (FUTEX_WAIT_BITSET), as ShmPool waits.
  const timespec at = absl::ToTimespec(until);
  syscall(SYS_futex, word, FUTEX_WAIT_BITSET, seen, &at, nullptr, FUTEX_BITSET_MATCH_ANY);
}

bool SpinWhileEqual(const std::atomic<uint32_t>& word, uint32_t seen, absl::Duration spin) {
  const absl::Duration until = MonotonicNow() + spin;
  for (int i = 0;; ++i) {
    if (word.load(std::memory_order_acquire) != seen) return true;
    // The clock is read every 64 polls: it costs more than a poll.
    if ((i & 63) == 63 && MonotonicNow() >= until) return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

void FutexWake(const void* word, int how_many) {
  syscall(SYS_futex, word, FUTEX_WAKE, how_many, nullptr, nullptr, 0);
}

void InitRobustMutex(void* mutex) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(static_cast<pthread_mutex_t*>(mutex), &attr);
  pthread_mutexattr_destroy(&attr);
}

absl::Status LockRobust(void* mutex, bool* repaired, const char* what) {
  const int locked = pthread_mutex_lock(static_cast<pthread_mutex_t*>(mutex));
  *repaired = locked == EOWNERDEAD;
  if (locked == 0 || locked == EOWNERDEAD) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("cannot lock the ", what, ": ", strerror(locked)));
}

void MarkConsistent(void* mutex) {
  pthread_mutex_consistent(static_cast<pthread_mutex_t*>(mutex));
}

void UnlockRobust(void* mutex) { pthread_mutex_unlock(static_cast<pthread_mutex_t*>(mutex)); }

absl::Status CheckAlive(ShmPool& pool, const BlockRef& ref, const char* what, pid_t creator,
                        uint64_t creator_start, pid_t peer) {
  absl::Status live = pool.Resolve(ref).status();
  if (absl::IsNotFound(live)) {
    return absl::NotFoundError(
        absl::StrCat("the ", what, " is gone (closed, or its creator exited)"));
  }
  if (!live.ok()) return live;
  if (!ProcessRuns(creator, creator_start)) {
    return absl::UnavailableError(
        absl::StrCat("the ", what, "'s creator (pid ", creator, ") exited"));
  }
  if (peer != 0 && !ProcessRuns(peer, 0)) {
    return absl::UnavailableError(absl::StrCat("peer process ", peer, " exited"));
  }
  return absl::OkStatus();
}

}  // namespace shm_object
}  // namespace dragon::common
