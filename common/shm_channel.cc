#include "common/shm_channel.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

namespace dragon::common {
namespace {

// "DRGNCHN3": the layout with inline slots and the put-back slots. A program
// built for an earlier layout ("DRGNCHNL", "DRGNCHN2") refuses these channels
// instead of misreading them.
inline constexpr uint64_t kChannelMagic = 0x334e48434e474452;

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

// A futex word, who waits for it to change and who of those sleeps in the
// kernel. A waiter reads `sequence`, adds itself to `waiters`, then looks at
// the ring again (no lock); the other side commits (tail or head, stored
// sequentially consistent), then reads `waiters`: so either the waiter sees
// the commit or the committer sees the waiter and bumps `sequence`. Nobody
// waiting: no bump, the common case of a busy channel. Likewise a waiter
// spins first and adds itself to `sleepers` only before its futex wait, and
// the bumper makes the wake-up syscall only when one sleeps: a syscall for a
// spinner would cost more than the whole message. A waiter killed while
// counted leaves a count high: a bump (or a syscall) per message from then
// on, never a lost wake-up.
struct ShmChannel::WaitWord {
  std::atomic<uint32_t> sequence;
  std::atomic<uint32_t> waiters;
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
  // Under the lock, on every message (read without it by a receiver that
  // finds the ring empty).
  alignas(64) pthread_mutex_t mutex;
  std::atomic<uint64_t> head;
  std::atomic<uint64_t> tail;
  // The CPU of the last commit of a send and of a receive (-1: none yet):
  // who is likely to answer a waiter (see SpinWhileEqual).
  std::atomic<int32_t> sender_cpu;
  std::atomic<int32_t> receiver_cpu;
  // Bumped after a push / a pop that has a waiter.
  alignas(64) WaitWord not_empty;
  alignas(64) WaitWord not_full;
};
uint64_t ShmChannel::SlotsOffset() {
  static_assert(sizeof(Slot) == 256, "a slot is four cache lines"); return (sizeof(Header) + 63) / 64 * 64; }

uint64_t ShmChannel::SlotCount() const { return uint64_t{h_->capacity} + kPutBackSlots; }

ShmChannel::Slot* ShmChannel::slots() const {
  return reinterpret_cast<Slot*>(reinterpret_cast<char*>(h_) + SlotsOffset());
}

pid_t ShmChannel::creator_pid() const { return h_->creator_pid; }

absl::StatusOr<BlockRef> ShmChannel::Create(ShmPool& pool, uint32_t capacity) {
  if (capacity == 0) return absl::InvalidArgumentError("a channel needs a capacity of at least 1");
  const uint64_t bytes = SlotsOffset() + (uint64_t{capacity} + kPutBackSlots) * sizeof(Slot);
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
  h->sender_cpu.store(-1, std::memory_order_relaxed);
  h->receiver_cpu.store(-1, std::memory_order_relaxed);
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
      span->size() < SlotsOffset() + (uint64_t{h->capacity} + kPutBackSlots) * sizeof(Slot)) {
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
  if (head != tail && slots()[head % SlotCount()].full.load(std::memory_order_relaxed) == kEmpty) {
    // A receiver took the message over and cleared its slot: finish its pop.
    h_->head.store(head + 1, std::memory_order_release);
  } else if (tail - head < SlotCount()) {  // a send or a put-back may be staged at tail
    Slot& slot = slots()[tail % SlotCount()];
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

namespace {

// How a waiter polls before it sleeps in the kernel (up to
// kSpinBeforeSleep): plainly while the one expected to answer (the last to
// commit on the other side) ran on another CPU, with sched_yield between
// looks while it ran on this one. Under load the scheduler wakes a sleeper
// onto its waker's CPU and a pair of processes on one CPU tends to stay
// there; plain spinning then only delays the answer it waits for. Measured
// with shm_channel_bench (8 B round trip p50, the pair on one CPU, load ~3
// from other builds): spinning 20 us then sleeping 49-58 us, sleeping at
// once 5.2-5.8 us, yielding 3.7 us; with the pair on two CPUs all ~0.6 us,
// yielding with the best p99 (0.65 us against 6.5). With nothing else to
// run, a yield returns at once.
bool SpinWhileEqual(const std::atomic<uint32_t>& word, uint32_t seen, bool answerer_here) {
  if (!answerer_here) return shm_object::SpinWhileEqual(word, seen, shm_object::kSpinBeforeSleep);
  const absl::Duration until = shm_object::MonotonicNow() + shm_object::kSpinBeforeSleep;
  while (shm_object::MonotonicNow() < until) {
    sched_yield();
    if (word.load(std::memory_order_acquire) != seen) return true;
  }
  return false;
}

}  // namespace

absl::Status ShmChannel::WaitOn(WaitWord& word, uint32_t seen, absl::Duration deadline,
                                absl::Duration& next_check, pid_t peer) {
  const std::atomic<int32_t>& answerer = &word == &h_->not_empty ? h_->sender_cpu : h_->receiver_cpu;
  const bool answerer_here = answerer.load(std::memory_order_relaxed) == sched_getcpu();
  if (!SpinWhileEqual(word.sequence, seen, answerer_here)) {
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

void ShmChannel::UnlockAndWake(WaitWord& word) {
  Unlock();
  // After our commit (see WaitWord): a waiter counted by now read the
  // sequence before it, so it sees the bump and does not sleep (or is
  // woken); one not counted yet will see our commit itself.
  if (word.waiters.load() == 0) return;
  word.sequence.fetch_add(1);
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
    // Counted under the lock: a receiver's pop after it sees the count.
    const uint32_t seen = h_->not_full.sequence.load();
    h_->not_full.waiters.fetch_add(1);
    Unlock();
    absl::Status alive = WaitOn(h_->not_full, seen, deadline, next_check, peer);
    h_->not_full.waiters.fetch_sub(1);
    if (!alive.ok()) return alive;
    if (absl::Status locked = Lock(); !locked.ok()) return locked;
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
  h_->tail.store(tail + 1);  // the commit (see Slot), then `waiters` is read (see WaitWord)
  h_->sender_cpu.store(sched_getcpu(), std::memory_order_relaxed);
  UnlockAndWake(h_->not_empty);
  return absl::OkStatus();
}

void ShmChannel::StageInline(absl::Span<const char> bytes) {
  Slot& slot = slots()[h_->tail.load(std::memory_order_relaxed) % SlotCount()];
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

  absl::Status queued = QueueBlock(*block, bytes.size(), start, timeout, peer);
  if (!queued.ok()) (void)pool_->FreeIfOwner(*block, self);
  return queued;
}

absl::Status ShmChannel::SendOwnedBlock(const BlockRef& block, uint64_t size,
                                        absl::Duration timeout, pid_t peer) {
  if (h_->closed.load(std::memory_order_acquire) != 0) {
    return absl::FailedPreconditionError("the channel is closed");
  }
  return QueueBlock(block, size, shm_object::MonotonicNow(), timeout, peer);
}

absl::Status ShmChannel::QueueBlock(const BlockRef& block, uint64_t size, absl::Duration start,
                                    absl::Duration timeout, pid_t peer) {
  if (absl::Status room = LockWithRoom(start, timeout, peer); !room.ok()) return room;
  // The commit order Repair relies on (see Slot): stage, then one store.
  const uint64_t tail = h_->tail.load(std::memory_order_relaxed);
  if (absl::Status staged = StageSend(block, size); !staged.ok()) {
    Unlock();
    return staged;
  }
  h_->tail.store(tail + 1);  // sequentially consistent (see WaitWord)
  h_->sender_cpu.store(sched_getcpu(), std::memory_order_relaxed);
  UnlockAndWake(h_->not_empty);
  return absl::OkStatus();
}

absl::Status ShmChannel::WaitForRoom(absl::Duration timeout, pid_t peer) {
  absl::Status room = LockWithRoom(shm_object::MonotonicNow(), timeout, peer);
  if (room.ok()) Unlock();
  return room;
}

absl::Status ShmChannel::PutBack(const BlockRef& block, uint64_t size) {
  if (absl::Status locked = Lock(); !locked.ok()) return locked;
  const uint64_t head = h_->head.load(std::memory_order_relaxed);
  if (head == 0 || h_->tail.load(std::memory_order_relaxed) - head >= SlotCount()) {
    Unlock();
    return absl::UnavailableError(absl::StrCat(
        "no slot to put a message of ", size, " bytes back: more than ", kPutBackSlots,
        " messages taken and put back at once"));
  }
  // The slot before head is free (the ring has room). Staged as a send is
  // (the block the creator's, then one store): a putter killed before the
  // store leaves the block the creator's, outside the ring, until the
  // channel goes (or, when that slot is also tail's, Repair publishes it).
  Slot& slot = slots()[(head - 1) % SlotCount()];
  slot.block = block;
  slot.size = size;
  slot.full.store(kInBlock, std::memory_order_release);
  if (absl::Status moved = pool_->TransferOwner(block, getpid(), h_->creator_pid); !moved.ok()) {
    slot.full.store(kEmpty, std::memory_order_relaxed);
    Unlock();
    return moved;
  }
  h_->head.store(head - 1);  // the commit, then `waiters` is read (see WaitWord)
  UnlockAndWake(h_->not_empty);
  return absl::OkStatus();
}

absl::Status ShmChannel::StageSend(const BlockRef& block, uint64_t size) {
  Slot& slot = slots()[h_->tail.load(std::memory_order_relaxed) % SlotCount()];
  slot.block = block;
  slot.size = size;
  slot.full.store(kInBlock, std::memory_order_release);
  absl::Status moved = pool_->TransferOwner(block, getpid(), h_->creator_pid);
  if (!moved.ok()) slot.full.store(kEmpty, std::memory_order_relaxed);
  return moved;
}

absl::Status ShmChannel::TakeHead(ShmMessage& message, std::string& small) {
  Slot& slot = slots()[h_->head.load(std::memory_order_relaxed) % SlotCount()];
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

bool ShmChannel::LooksEmpty() const {
  return h_->head.load() == h_->tail.load() && h_->closed.load() == 0;
}

absl::StatusOr<ShmMessage> ShmChannel::ReceiveOrCopy(std::string& small, absl::Duration timeout,
                                                     pid_t peer) {
  const absl::Duration start = shm_object::MonotonicNow();
  const absl::Duration deadline = start + timeout;
  absl::Duration next_check = start + shm_object::kLivenessInterval;
  bool look_under_lock = false;
  for (;;) {
    // An empty ring is waited on without the lock (see WaitWord): a waiting
    // receiver takes the lock once, to take its message. After a wait that
    // ended with no change (a liveness check, every 100 ms), one look under
    // the lock: it repairs what a process killed holding it left, such as a
    // message staged and not committed.
    if (!look_under_lock && LooksEmpty()) {
      if (shm_object::MonotonicNow() >= deadline) {
        look_under_lock = true;  // the last look, under the lock
        continue;
      }
      const uint32_t seen = h_->not_empty.sequence.load();
      h_->not_empty.waiters.fetch_add(1);
      absl::Status alive = absl::OkStatus();
      if (LooksEmpty()) alive = WaitOn(h_->not_empty, seen, deadline, next_check, peer);
      h_->not_empty.waiters.fetch_sub(1);
      if (!alive.ok()) return alive;
      look_under_lock = h_->not_empty.sequence.load() == seen;
      continue;
    }
    look_under_lock = false;
    if (absl::Status locked = Lock(); !locked.ok()) return locked;
    uint64_t head = h_->head.load(std::memory_order_relaxed);
    while (head != h_->tail.load(std::memory_order_relaxed)) {
      ShmMessage message;
      absl::Status taken = TakeHead(message, small);
      if (!taken.ok() && !absl::IsFailedPrecondition(taken) && !absl::IsNotFound(taken)) {
        Unlock();  // the pool itself failed: leave the message queued
        return taken;
      }
      // The commit (see Slot), then `waiters` is read (see WaitWord).
      h_->head.store(++head);
      // A failed transfer: a receiver killed between taking the message over
      // and its commit left it here; it was that receiver's, skip it.
      if (!taken.ok()) continue;
      h_->receiver_cpu.store(sched_getcpu(), std::memory_order_relaxed);
      UnlockAndWake(h_->not_full);
      return message;
    }
    const bool closed = h_->closed.load(std::memory_order_relaxed) != 0;
    Unlock();
    if (closed) return absl::OutOfRangeError("the channel is closed and drained");
    if (shm_object::MonotonicNow() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("no message within ", absl::FormatDuration(timeout)));
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
  h_->closed.store(1);  // sequentially consistent: see WaitWord
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
  h_->closed.store(1);  // sequentially consistent: see WaitWord
  const uint64_t tail = h_->tail.load(std::memory_order_relaxed);
  for (uint64_t at = h_->head.load(std::memory_order_relaxed); at != tail; ++at) {
    Slot& slot = slots()[at % SlotCount()];
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

}  // namespace dragon::common
