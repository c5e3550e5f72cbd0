// A channel of the node's shared-memory pool (issue 14, "Channels and
// communication objects"): a bounded queue of byte messages that any number
// of processes on the node send to and receive from. The channel lives in one
// pool block (header + a ring of slots). A message of at most
// ShmChannel::kInlineBytes travels inside its slot (copied in by Send, out by
// the receiver, no pool block: the small-message round trip is the lock and
// two copies); a larger one is a pool block of its own, so the ring holds only
// its reference and it moves without a second copy of the queue.
//
// Safe across processes: one robust process-shared mutex guards the ring
// (a receiver that finds it empty waits without taking it), waiting is a
// bounded spin then a futex on a sequence word, bumped and woken only when
// someone waits or sleeps (see shm_pool_layout.h for why not a condition
// variable), and nobody waits for a dead process: a waiter wakes at
// least every kLivenessInterval and fails Unavailable when the channel's
// creator (or the caller's `peer`) exited, NotFound when the channel is gone.
//
// Who owns a large message's block (ShmPool owners, reclaimed by the agent's
// janitor when their process dies):
//   sender (while copying and waiting for room) -> channel's creator (from
//   the moment it is in the ring) -> receiver (once Receive returns it).
// So a sender killed before its message is queued loses only its own block,
// one killed after loses nothing, and a receiver killed after Receive loses
// only what it was given. An inline message is in the channel's own block
// from the moment it is queued: a sender killed before the commit leaves
// nothing (or, killed after the copy, a whole message that the next locker
// publishes), a receiver killed after taking it loses only that message.
#ifndef DRAGON_COMMON_SHM_CHANNEL_H_
#define DRAGON_COMMON_SHM_CHANNEL_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/shm_pool.h"

namespace dragon::common {

// What ShmChannel and ShmBarrier share: liveness of processes and of the
// object's block, the robust lock, and bounded futex waits.
namespace shm_object {

// Longest single sleep of a waiter: how late a dead creator or peer is noticed.
inline constexpr absl::Duration kLivenessInterval = absl::Milliseconds(100);

// /proc/<pid>/stat field 22 (0 when the process is gone), as ShmPool records it.
uint64_t ProcessStartTime(pid_t pid);
// Runs (not a zombie) and, if `start_time` != 0, is the process started then.
bool ProcessRuns(pid_t pid, uint64_t start_time);
absl::Duration MonotonicNow();
// Sleeps while *word == seen, at most until `until` (monotonic).
void FutexWait(const void* word, uint32_t seen, absl::Duration until);
// How long a waiter polls its word before it sleeps in the kernel: a peer
// that answers within it is seen without a futex sleep and wake-up (measured
// ~5 us per round trip between two processes on this kind of machine, most
// of a small message's round trip), at the price of that much CPU per wait.
inline constexpr absl::Duration kSpinBeforeSleep = absl::Microseconds(20);
// Polls `*word` until it is no longer `seen` or `spin` has passed; true if it
// changed.
bool SpinWhileEqual(const std::atomic<uint32_t>& word, uint32_t seen, absl::Duration spin);
void FutexWake(const void* word, int how_many);
// Initializes a robust process-shared mutex in shared memory.
void InitRobustMutex(void* mutex);
// Locks it; `*repaired` is set when the last holder died with it (the caller
// repairs its state, then it is made consistent by this call's caller via
// MarkConsistent).
absl::Status LockRobust(void* mutex, bool* repaired, const char* what);
void MarkConsistent(void* mutex);
void UnlockRobust(void* mutex);

// Checks, for a waiter's wake-up: the object's block is still allocated, its
// creator runs, and `peer` (0: none) runs.
absl::Status CheckAlive(ShmPool& pool, const BlockRef& ref, const char* what, pid_t creator,
                        uint64_t creator_start, pid_t peer);

}  // namespace shm_object

struct ShmChannelStats {
  uint64_t count = 0;
  uint64_t capacity = 0;
  bool closed = false;
  uint64_t repairs = 0;  // times a process died holding the channel's lock
};

// A received message: its own pool block (now the receiver's: Resolve it,
// read `size` bytes, Free it) and its size (may be 0; the block is >= 1 byte).
// From ReceiveSmallInto, a small message is instead in the caller's string
// (`in_small`) and has no block.
struct ShmMessage {
  BlockRef block;
  uint64_t size = 0;
  bool in_small = false;
};

class ShmChannelTestPeer;

class ShmChannel {
 public:
  // Messages up to this size are stored in the ring's slot itself (a slot is
  // 256 bytes: 40 of bookkeeping, the rest the message), larger ones in a
  // pool block each. 216 B holds a small pickled object or a control message.
  static constexpr uint64_t kInlineBytes = 216;
  // Slots beyond `capacity` that only PutBack fills: senders see the channel
  // full at `capacity`, so a taker that puts back at most this many messages
  // at once (AgentChannels holds at most this many taken messages) always
  // finds a slot, whatever senders did meanwhile, and never loses one.
  static constexpr uint32_t kPutBackSlots = 32;

  // A channel of `capacity` slots in a block of `pool`, owned by this process
  // (its creator). The channel lives until Destroy or its creator's death.
  static absl::StatusOr<BlockRef> Create(ShmPool& pool, uint32_t capacity);
  // The channel `ref` names; NotFound when it is gone (destroyed, or its
  // creator exited and its blocks were reclaimed). `pool` must outlive it.
  static absl::StatusOr<ShmChannel> Open(ShmPool& pool, BlockRef ref);

  // Copies `bytes` into its slot (up to kInlineBytes) or into a block of its
  // own, and queues it; waits up to `timeout` (for pool space, then for a
  // free slot): ResourceExhausted (the pool), DeadlineExceeded "channel
  // full", FailedPrecondition when closed, Unavailable when the creator or
  // `peer` exited.
  absl::Status Send(absl::Span<const char> bytes, absl::Duration timeout, pid_t peer = 0);
  // The oldest message in a block of the caller's, waiting up to `timeout`:
  // DeadlineExceeded, OutOfRange once closed and drained (end of stream),
  // Unavailable as in Send. A message that was inline is copied into a new
  // block (ResourceExhausted, and the message lost, if the pool has no room
  // for it): readers that copy anyway use ReceiveSmallInto or ReceiveInto.
  absl::StatusOr<ShmMessage> Receive(absl::Duration timeout, pid_t peer = 0);
  // Receive, but a message of at most kInlineBytes is copied into `small`
  // (resized) and returned with `in_small` set and no block.
  absl::StatusOr<ShmMessage> ReceiveSmallInto(std::string& small, absl::Duration timeout,
                                              pid_t peer = 0);
  // Copies the oldest message into `out` (resized), freeing its block if it had one.
  absl::Status ReceiveInto(std::string& out, absl::Duration timeout, pid_t peer = 0);
  // Queues `block` of the channel's pool, a block the caller owns whose first
  // `size` bytes are the message, without copying it (a message pulled from
  // another node's pool): waits and fails as Send; on any error the block
  // stays the caller's. Messages of any size go this way (none inline).
  absl::Status SendOwnedBlock(const BlockRef& block, uint64_t size, absl::Duration timeout,
                              pid_t peer = 0);
  // Waits up to `timeout` until the ring has a free slot, which another
  // sender may still take first: for a sender that fetches its message only
  // once there is room (a block pulled from another node). Errors as Send's.
  absl::Status WaitForRoom(absl::Duration timeout, pid_t peer = 0);
  // Puts a message Receive gave the caller back at the head, the oldest
  // again (its block the creator's again): for a receiver that could not
  // hand it on. Does not wait; it has room while at most kPutBackSlots
  // taken messages are put back at once (Unavailable past that); on any
  // error the block stays the caller's.
  absl::Status PutBack(const BlockRef& block, uint64_t size);
  // No more sends; receivers drain what is queued, then get OutOfRange.
  absl::Status Close();
  // Creator only: frees the queued messages and the channel's block.
  absl::Status Destroy();
  absl::StatusOr<ShmChannelStats> Stats();

  const BlockRef& ref() const { return ref_; }
  pid_t creator_pid() const;

 private:
  friend class ShmChannelTestPeer;
  struct Header;
  struct Slot;
  struct WaitWord;

  ShmChannel(ShmPool& pool, BlockRef ref, Header* header) : pool_(&pool), ref_(ref), h_(header) {}
  absl::Status Lock();
  void Unlock();
  // Puts right what a process killed holding the lock left half done.
  void Repair();
  // Waits (lock released) on `word` whose value under the lock was `seen`.
  absl::Status WaitOn(WaitWord& word, uint32_t seen, absl::Duration deadline,
                      absl::Duration& next_check, pid_t peer);
  // Locks and waits until the ring has a free slot: OK with the lock held,
  // otherwise the lock released.
  absl::Status LockWithRoom(absl::Duration start, absl::Duration timeout, pid_t peer);
  // After the commit of a push (a pop): unlocks and wakes one waiter of the
  // other side if any sleeps or spins.
  void UnlockAndWake(WaitWord& word);
  // Without the lock: no message queued and not closed.
  bool LooksEmpty() const;
  // Wakes every waiter of both sides (close, destroy, repair).
  void WakeAll();
  absl::Status SendInline(absl::Span<const char> bytes, absl::Duration timeout, pid_t peer);
  absl::Status SendBlock(absl::Span<const char> bytes, absl::Duration timeout, pid_t peer);
  // Waits for room and queues `block` (the caller's); on error it stays the caller's.
  absl::Status QueueBlock(const BlockRef& block, uint64_t size, absl::Duration start,
                          absl::Duration timeout, pid_t peer);
  // Receive's loop; an inline message goes into `small`.
  absl::StatusOr<ShmMessage> ReceiveOrCopy(std::string& small, absl::Duration timeout, pid_t peer);
  // Under the lock, the halves of a send and a receive before their commit
  // (see Slot in shm_channel.cc): fill the slot at tail (and hand the block
  // to the creator); take the message at head over (an inline one copied
  // into `small`) and clear its slot.
  absl::Status StageSend(const BlockRef& block, uint64_t size);
  void StageInline(absl::Span<const char> bytes);
  absl::Status TakeHead(ShmMessage& message, std::string& small);
  Slot* slots() const;
  // capacity + kPutBackSlots: the ring's slots (indexes are modulo this).
  uint64_t SlotCount() const;
  static uint64_t SlotsOffset();

  ShmPool* pool_;
  BlockRef ref_;
  Header* h_;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_SHM_CHANNEL_H_
