// A barrier of the node's shared-memory pool (issue 14, "Channels and
// communication objects"): N processes (or threads) wait until all N
// arrived, round after round, like Python's threading.Barrier. It lives in
// one pool block, behind a robust process-shared mutex, with futex waits that
// wake at least every shm_object::kLivenessInterval to check that the
// barrier's creator runs and its block is still allocated.
//
// Broken, as threading.Barrier: a Wait that times out, Abort, or a creator
// found dead breaks the barrier; everyone waiting then and every later Wait
// fails FailedPrecondition "broken" until Reset. A party killed while waiting
// is not noticed (the barrier does not know who is meant to come); the
// others time out, which breaks it.
#ifndef DRAGON_COMMON_SHM_BARRIER_H_
#define DRAGON_COMMON_SHM_BARRIER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/shm_channel.h"
#include "common/shm_pool.h"

namespace dragon::common {

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

  ShmBarrier(ShmPool& pool, BlockRef ref, Header* header) : pool_(&pool), ref_(ref), h_(header) {}
  absl::Status Lock();
  void Unlock();
  // Under the lock: fails the current waiters, and (`stay_broken`) later ones.
  void Break(bool stay_broken);

  ShmPool* pool_;
  BlockRef ref_;
  Header* h_;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_SHM_BARRIER_H_
