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

// "DRGNCHN2": the layout with inline slots. A program built for the first
// layout ("DRGNCHNL") refuses these channels instead of misreading them.
inline constexpr uint64_t kChannelMagic = 0x324e48434e474452;

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
// says whether it holds a message nobody took yet (and where its bytes are).
// A send writes the slot (the bytes or the block, size, then `full`), hands
// a block to the creator, then stores tail+1; a receive takes the message
// over (copies the bytes out, or takes the block), clears `full`, then
// stores head+1. So a half-done step is always one of two states, which
// Repair finishes: a full slot at `tail` (a send that had not committed)
// and an empty slot at `head` (a receive that had not committed).
enum SlotState : uint64_t {
  kEmpty = 0,
  kInBlock = 1,   // `block` holds the message
  kInline = 2,    // `bytes` holds it
};

struct alignas(64) ShmChannel::Slot {
  std::atomic<uint64_t> full;  // a SlotState
  uint64_t size;
  BlockRef block;
  char bytes[ShmChannel::kInlineBytes];
};

// A futex word and how many sleep on it in the kernel: a waiter spins first,
// and a wake-up syscall for a spinner would cost the sender more than the
// whole message. The sleeper adds itself before its futex wait and the waker
// reads the count after bumping the word, both sequentially consistent: so
// either the waker sees the sleeper, or the sleeper's futex wait sees the
// word changed and does not sleep. A sleeper killed in the kernel leaves the
// count high: a syscall per message from then on, never a lost wake-up.
struct ShmChannel::WaitWord {
  std::atomic<uint32_t> sequence;
  std::atomic<uint32_t> sleepers;
};
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex words");

// The words each side touches on every message are apart from those it only
// reads and from the futex words the other side spins on, so a spinning
// waiter does not steal the line a sender is writing under the lock.
struct ShmChannel::Header {
  // Written once by Create (and `closed`, `repairs` rarely).
  std::atomic<uint64_t> magic;  // kChannelMagic once initialized; 0 once destroyed
  uint32_t capacity;
  int32_t creator_pid;
  uint64_t creator_start;
  std::atomic<uint32_t> closed;
  uint32_t unused;
  uint64_t repairs;
  // Under the lock, on every message.
  alignas(64) pthread_mutex_t mutex;
  std::atomic<uint64_t> head;
  std::atomic<uint64_t> tail;
  // Waiters, sleeping or spinning: a send (receive) bumps and wakes only
  // when one is counted. Bumped under the lock before the waiter reads its
  // word's value; a count left high by a killed waiter costs a syscall per
  // message, never a lost wake-up.
  uint32_t receivers_waiting;
  uint32_t senders_waiting;
  // Bumped after a push / a pop that has a waiter.
  alignas(64) WaitWord not_empty;
  alignas(64) WaitWord not_full;
};
uint64_t ShmChannel::SlotsOffset() {
  static_assert(sizeof(Slot) == 256, "a slot is four cache lines"); return (sizeof(Header) + 63) / 64 * 64; }

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
  if (reinterpret_cast<uintptr_t>(span->data()) % alignof(Header) != 0) {
    (void)pool.Free(*ref);
    return absl::InternalError("a pool block is not aligned to a cache line");
  }
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
  if (head != tail && slots()[head % cap].full.load(std::memory_order_relaxed) == kEmpty) {
    // A receiver took the message over and cleared its slot: finish its pop.
    h_->head.store(head + 1, std::memory_order_release);
  } else if (tail - head < cap) {
    Slot& slot = slots()[tail % cap];
    const uint64_t state = slot.full.load(std::memory_order_relaxed);
    if (state == kInline) {
      // A sender that died after copying its bytes in (`full` is stored
      // after them): the message is whole, publish it.
      h_->tail.store(tail + 1, std::memory_order_release);
    } else if (state == kInBlock) {
      // A sender that died before its commit. Once the block is the
      // creator's (the transfer is the check), the message is whole: publish
      // it. Otherwise it is still the dead sender's, for the janitor.
      const pid_t creator = h_->creator_pid;
      if (pool_->TransferOwner(slot.block, creator, creator).ok()) {
        h_->tail.store(tail + 1, std::memory_order_release);
      } else {
        slot.full.store(kEmpty, std::memory_order_relaxed);
      }
    }
  }
  h_->repairs += 1;
  // The dead one may have been about to wake someone.
  WakeAll();
}

void ShmChannel::WakeAll() {
  for (WaitWord* word : {&h_->not_empty, &h_->not_full}) {
    word->sequence.fetch_add(1);
    shm_object::FutexWake(&word->sequence, INT32_MAX);
  }
}

absl::Status ShmChannel::WaitOn(WaitWord& word, uint32_t seen, absl::Duration deadline,
                                absl::Duration& next_check, pid_t peer) {
  if (!shm_object::SpinWhileEqual(word.sequence, seen, shm_object::kSpinBeforeSleep)) {
    word.sleepers.fetch_add(1);  // before the futex checks the word (see WaitWord)
    shm_object::FutexWait(&word.sequence, seen, std::min(deadline, next_check));
    word.sleepers.fetch_sub(1);
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

void ShmChannel::UnlockAndWake(WaitWord& word, bool someone_waits) {
  Unlock();
  // After unlocking: a waiter counted before our commit read the word under
  // the lock, so it sees it changed and does not sleep (or is woken); one
  // that locks after our commit sees the change itself. Nobody counted:
  // nothing to bump, the common case of a busy channel. Only spinners: no
  // syscall.
  if (!someone_waits) return;
  word.sequence.fetch_add(1);  // sequentially consistent (see WaitWord)
  if (word.sleepers.load() > 0) shm_object::FutexWake(&word.sequence, 1);
}

absl::Status ShmChannel::LockWithRoom(absl::Duration start, absl::Duration timeout, pid_t peer) {
  const absl::Duration deadline = start + timeout;
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::Duration next_check = start + shm_object::kLivenessInterval;
  const uint32_t cap = h_->capacity;
  for (;;) {
    if (h_->closed.load(std::memory_order_relaxed) != 0) {
      Unlock();
      return absl::FailedPreconditionError("the channel is closed");
    }
    if (h_->tail.load(std::memory_order_relaxed) - h_->head.load(std::memory_order_relaxed) < cap) {
      return absl::OkStatus();
    }
    if (shm_object::MonotonicNow() >= deadline) {
      Unlock();
      return absl::DeadlineExceededError(
          absl::StrCat("channel full for ", absl::FormatDuration(timeout)));
    }
    const uint32_t seen = h_->not_full.sequence.load(std::memory_order_acquire);
    h_->senders_waiting += 1;
    Unlock();
    absl::Status alive = WaitOn(h_->not_full, seen, deadline, next_check, peer);
    if (absl::IsNotFound(alive)) return alive;  // no lock to take any more
    if (absl::Status locked = Lock(); !locked.ok()) return locked;
    h_->senders_waiting -= 1;
    if (!alive.ok()) {
      Unlock();
      return alive;
    }
  }
}

absl::Status ShmChannel::Send(absl::Span<const char> bytes, absl::Duration timeout, pid_t peer) {
  if (h_->closed.load(std::memory_order_acquire) != 0) {
    return absl::FailedPreconditionError("the channel is closed");
  }
  return bytes.size() <= kInlineBytes ? SendInline(bytes, timeout, peer)
                                      : SendBlock(bytes, timeout, peer);
}

absl::Status ShmChannel::SendInline(absl::Span<const char> bytes, absl::Duration timeout,
                                    pid_t peer) {
  if (absl::Status room = LockWithRoom(shm_object::MonotonicNow(), timeout, peer); !room.ok()) {
    return room;
  }
  const uint64_t tail = h_->tail.load(std::memory_order_relaxed);
  StageInline(bytes);
  h_->tail.store(tail + 1, std::memory_order_release);  // the commit (see Slot)
  UnlockAndWake(h_->not_empty, h_->receivers_waiting > 0);
  return absl::OkStatus();
}

void ShmChannel::StageInline(absl::Span<const char> bytes) {
  Slot& slot = slots()[h_->tail.load(std::memory_order_relaxed) % h_->capacity];
  slot.size = bytes.size();
  if (!bytes.empty()) std::memcpy(slot.bytes, bytes.data(), bytes.size());
  slot.full.store(kInline, std::memory_order_release);
}

absl::Status ShmChannel::SendBlock(absl::Span<const char> bytes, absl::Duration timeout,
                                   pid_t peer) {
  const absl::Duration start = shm_object::MonotonicNow();
  const pid_t self = getpid();
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
  if (absl::Status room = LockWithRoom(start, timeout, peer); !room.ok()) return fail(room);
  // The commit order Repair relies on (see Slot): stage, then one store.
  const uint64_t tail = h_->tail.load(std::memory_order_relaxed);
  if (absl::Status staged = StageSend(*block, bytes.size()); !staged.ok()) {
    Unlock();
    return fail(staged);
  }
  h_->tail.store(tail + 1, std::memory_order_release);
  UnlockAndWake(h_->not_empty, h_->receivers_waiting > 0);
  return absl::OkStatus();
}

absl::Status ShmChannel::StageSend(const BlockRef& block, uint64_t size) {
  Slot& slot = slots()[h_->tail.load(std::memory_order_relaxed) % h_->capacity];
  slot.block = block;
  slot.size = size;
  slot.full.store(kInBlock, std::memory_order_release);
  absl::Status moved = pool_->TransferOwner(block, getpid(), h_->creator_pid);
  if (!moved.ok()) slot.full.store(kEmpty, std::memory_order_relaxed);
  return moved;
}

absl::Status ShmChannel::TakeHead(ShmMessage& message, std::string& small) {
  Slot& slot = slots()[h_->head.load(std::memory_order_relaxed) % h_->capacity];
  const uint64_t state = slot.full.load(std::memory_order_acquire);
  if (state == kEmpty) {
    return absl::NotFoundError("an empty slot");  // a pop Repair did not see finished
  }
  if (state == kInline) {
    message = ShmMessage{BlockRef{}, slot.size, /*in_small=*/true};
    small.assign(slot.bytes, std::min<uint64_t>(slot.size, kInlineBytes));
    slot.full.store(kEmpty, std::memory_order_relaxed);
    return absl::OkStatus();
  }
  message = ShmMessage{slot.block, slot.size};
  absl::Status taken = pool_->TransferOwner(message.block, h_->creator_pid, getpid());
  // A hard error of the pool leaves the message queued; a stale block, or
  // one a receiver killed before its commit took over, is dropped.
  if (taken.ok() || absl::IsFailedPrecondition(taken) || absl::IsNotFound(taken)) {
    slot.full.store(kEmpty, std::memory_order_relaxed);
  }
  return taken;
}

absl::StatusOr<ShmMessage> ShmChannel::ReceiveOrCopy(std::string& small, absl::Duration timeout,
                                                     pid_t peer) {
  const absl::Duration start = shm_object::MonotonicNow();
  const absl::Duration deadline = start + timeout;
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  absl::Duration next_check = start + shm_object::kLivenessInterval;
  for (;;) {
    uint64_t head = h_->head.load(std::memory_order_relaxed);
    while (head != h_->tail.load(std::memory_order_relaxed)) {
      ShmMessage message;
      absl::Status taken = TakeHead(message, small);
      if (!taken.ok() && !absl::IsFailedPrecondition(taken) && !absl::IsNotFound(taken)) {
        Unlock();  // the pool itself failed: leave the message queued
        return taken;
      }
      // The commit (see Slot).
      h_->head.store(++head, std::memory_order_release);
      // A failed transfer: a receiver killed between taking the message over
      // and its commit left it here; it was that receiver's, skip it.
      if (!taken.ok()) continue;
      UnlockAndWake(h_->not_full, h_->senders_waiting > 0);
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
    const uint32_t seen = h_->not_empty.sequence.load(std::memory_order_acquire);
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

absl::StatusOr<ShmMessage> ShmChannel::ReceiveSmallInto(std::string& small,
                                                        absl::Duration timeout, pid_t peer) {
  return ReceiveOrCopy(small, timeout, peer);
}

absl::StatusOr<ShmMessage> ShmChannel::Receive(absl::Duration timeout, pid_t peer) {
  std::string small;
  absl::StatusOr<ShmMessage> message = ReceiveOrCopy(small, timeout, peer);
  if (!message.ok() || !message->in_small) return message;
  // The caller wants a block: give the inline message one of its own.
  absl::StatusOr<BlockRef> block = pool_->Allocate(std::max<uint64_t>(small.size(), 1), timeout);
  if (!block.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a block for a received message of ", small.size(), " bytes: ", block.status().message()));
  }
  absl::StatusOr<absl::Span<char>> to = pool_->Resolve(*block);
  if (!to.ok()) return to.status();
  if (!small.empty()) std::memcpy(to->data(), small.data(), small.size());
  return ShmMessage{*block, small.size()};
}

absl::Status ShmChannel::ReceiveInto(std::string& out, absl::Duration timeout, pid_t peer) {
  absl::StatusOr<ShmMessage> message = ReceiveOrCopy(out, timeout, peer);
  if (!message.ok()) return message.status();
  if (message->in_small) return absl::OkStatus();
  absl::StatusOr<absl::Span<char>> from = pool_->Resolve(message->block);
  if (!from.ok()) return from.status();
  out.assign(from->data(), message->size);
  return pool_->Free(message->block);
}

absl::Status ShmChannel::Close() {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  h_->closed.store(1, std::memory_order_release);
  Unlock();
  WakeAll();
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
    if (slot.full.load(std::memory_order_relaxed) == kInBlock) {
      (void)pool_->FreeIfOwner(slot.block, h_->creator_pid);
    }
  }
  // Waiters check the magic on waking, before they touch the lock again.
  h_->magic.store(0, std::memory_order_release);
  Unlock();
  WakeAll();
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
