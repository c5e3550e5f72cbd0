// A barrier of the node's shared-memory pool (issue 14, "Channels and
// communication objects"): N processes (or threads) wait until all N
// arrived, round after round, like Python's threading.Barrier. It lives in
// one pool block, behind a robust process-shared mutex, with futex waits that
// wake at least every shm_object::kLivenessInterval to check that the
// barrier's creator runs and its block is still allocated.
//
// Broken, as threading.Barrier: a Wait that times out, Abort, or a creator
// found dead breaks the barrier; everyone waiting then and every later Wait
// fails FailedPrecondition "broken: <why>" until Reset. A party of this node
// killed while waiting is not noticed (the barrier does not know who is meant
// to come); the others time out, which breaks it. A party whose wait is
// interrupted (Ctrl-C, a Parsl walltime) breaks it too, by Interrupt: its
// process goes on without the round, so the others would otherwise wait for
// an arrival that no longer means anything (threading.Barrier would take the
// arrival back instead; here the arrival index is the party's identity in
// the round, so it cannot be handed to a later arrival).
//
// Parties of this node that must stay responsive (the Python binding, which
// checks for signals and asynchronous exceptions) wait in slices as remote
// ones do: ArriveHere, then AwaitRound with the ticket, GiveUp at their
// timeout, Interrupt when they stop waiting for another reason.
//
// Parties on other nodes (a Barrier used through the agents,
// agent/agent_barriers.h) cannot block in this process: the home agent
// waits for them in slices. Such a party Arrives once, which counts it and
// gives it a ticket (the round it joined, and its arrival index), then calls
// AwaitRound with the ticket as often as it likes: a retried slice never
// counts a second arrival. Each AwaitRound renews the party's lease; a
// remote party whose lease runs out (its process died, its node or agent was
// lost: nobody renews it) breaks the barrier for everyone, seen by the next
// waiter that wakes (every kLivenessInterval at the latest). Leases are
// times on this node's monotonic clock (shm_object::MonotonicNow), the one
// every process of the node shares.
#ifndef DRAGON_COMMON_SHM_BARRIER_H_
#define DRAGON_COMMON_SHM_BARRIER_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/shm_channel.h"
#include "common/shm_pool.h"

namespace dragon::common {

// What one arrival is: the round it joined (generation), the breaks seen
// then, and its arrival index in that round (0 .. parties-1, as
// threading.Barrier.wait returns).
struct BarrierTicket {
  uint64_t generation = 0;
  uint64_t breaks = 0;
  uint32_t index = 0;
};

// A party that waits through the home agent: who it is (for the error when
// its lease runs out) and until when its arrival holds without a renewal.
struct RemoteParty {
  pid_t pid = 0;
  std::string node;
  absl::Duration lease_until;  // shm_object::MonotonicNow time
};

class ShmBarrier {
 public:
  // A barrier for `parties` (>= 1) in a block of `pool`, owned by this process.
  static absl::StatusOr<BlockRef> Create(ShmPool& pool, uint32_t parties);
  // NotFound when the barrier is gone. `pool` must outlive the object.
  static absl::StatusOr<ShmBarrier> Open(ShmPool& pool, BlockRef ref);

  // Ok once all parties arrived in this round; DeadlineExceeded after
  // `timeout` (and the barrier is broken for everyone), FailedPrecondition
  // when broken, Unavailable when the creator exited, NotFound when the
  // barrier is gone.
  absl::Status Wait(absl::Duration timeout);
  // Wait, giving this party's arrival index in its round.
  absl::StatusOr<uint32_t> ArriveAndWait(absl::Duration timeout);

  // A remote party's arrival, counted once: its ticket. FailedPrecondition
  // when broken.
  absl::StatusOr<BarrierTicket> Arrive(const RemoteParty& party);
  // The arrival of a party of this node that waits in slices (AwaitRound):
  // no lease (its process shares the node's fate). FailedPrecondition when
  // broken.
  absl::StatusOr<BarrierTicket> ArriveHere();
  // Waits up to `wait` for the ticket's round: true once it is over, false
  // when it is still open after `wait` (the party's lease renewed until
  // `lease_until` first). FailedPrecondition when broken (also when a remote
  // party's lease ran out, which breaks it), Unavailable and NotFound as
  // Wait.
  absl::StatusOr<bool> AwaitRound(const BarrierTicket& ticket, absl::Duration wait,
                                  absl::Duration lease_until);
  // The party's own timeout (`timeout`, for the message) passed: Ok if its
  // round is over after all, else the barrier is broken for everyone and
  // DeadlineExceeded, as a Wait that times out. FailedPrecondition when it
  // was broken meanwhile.
  absl::Status GiveUp(const BarrierTicket& ticket, absl::Duration timeout);

  // The party of `ticket` stopped waiting before its round was over (`why`:
  // what interrupted it, for the others' errors): breaks the barrier, as its
  // timeout would. Nothing changes when the round is over already or the
  // barrier broke meanwhile (Ok either way: the party's own exception is
  // what its caller reports).
  absl::Status Interrupt(const BarrierTicket& ticket, const std::string& why);

  // Breaks the barrier: current and later waiters fail until Reset.
  absl::Status Abort();
  // Back to its first state: current waiters fail "broken", later ones wait.
  absl::Status Reset();
  // Creator only: frees the barrier's block.
  absl::Status Destroy();

  uint32_t parties() const;
  // Arrived in the current round and waiting.
  absl::StatusOr<uint32_t> n_waiting();
  absl::StatusOr<bool> broken();
  const BlockRef& ref() const { return ref_; }

 private:
  struct Header;
  struct Slot;

  ShmBarrier(ShmPool& pool, BlockRef ref, Header* header) : pool_(&pool), ref_(ref), h_(header) {}
  Slot* slots();
  absl::Status Lock();
  void Unlock();
  // Under the lock: fails the current waiters, and (`stay_broken`) later
  // ones; `why` goes into their errors.
  void Break(bool stay_broken, const std::string& why);
  absl::Status BrokenError();
  // Under the lock: counts an arrival; `party` null for one of this node.
  absl::StatusOr<BarrierTicket> ArriveLocked(const RemoteParty* party);
  // Under the lock: breaks the barrier if a remote party's lease ran out,
  // but for the party at `waiting_index`, which is waiting, so alive.
  bool BreakOnLapsedLease(absl::Duration now, uint32_t waiting_index);
  // Called with the lock held; returns with it released. Waits until the
  // ticket's round is over (Ok), it is broken (FailedPrecondition), `until`
  // passed (DeadlineExceeded, nothing changed), or the barrier fails
  // (Unavailable: its creator exited, now broken; NotFound: gone).
  absl::Status AwaitLocked(const BarrierTicket& ticket, absl::Duration until);

  ShmPool* pool_;
  BlockRef ref_;
  Header* h_;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_SHM_BARRIER_H_
