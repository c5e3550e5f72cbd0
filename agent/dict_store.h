// DictStore: the shards of Dictionaries (dragon_parsl.comm.Dictionary) that
// this node's agent holds, their values in blocks of the node's
// shared-memory pool (issue 14, "Dictionary (a key-value store sharded
// across the agents' pools)"). The agent applies the operations of its local
// processes (AgentData.Dict) and of other agents (forwarded over UCX by
// their DataPlane) here; which shard a key belongs to is the client's
// business (a hash of the key over the Dictionary's nodes).
//
// Keys live in the agent's heap (they are looked up), values in pool blocks
// owned by the agent, so a Dictionary's bulk is in shared memory and counted
// in the pool's use (`dragonctl nodes`, SHM column), and a full pool is an
// error naming --shm-pool-mb rather than the agent's memory growing. A value
// of up to 2 KiB takes a slot in a slab shared with other small values
// (agent/dict_slabs.h: a pool block per many values, not one each); a larger
// value takes one block of its own (blocks are any power of two up to the
// pool), so a value larger than "a block" of the smallest size spans as many
// as it needs. Everything is freed by DESTROY (the creator's close()) or with
// the agent.
#ifndef DRAGON_AGENT_DICT_STORE_H_
#define DRAGON_AGENT_DICT_STORE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/dict_slabs.h"
#include "common/buddy_allocator.h"
#include "common/shm_pool.h"
#include "proto/agent.pb.h"

namespace dragon::agent {

class DictStore {
 public:
  // `alloc_wait`: how long a PUT waits for room in a full pool before it
  // fails ResourceExhausted (ShmPool's message, naming --shm-pool-mb).
  explicit DictStore(common::ShmPool* pool, absl::Duration alloc_wait = absl::Seconds(1));
  // Frees every value's block.
  ~DictStore();
  DictStore(const DictStore&) = delete;
  DictStore& operator=(const DictStore&) = delete;

  // Values of at least this many bytes go to a GET's reader in a block of
  // the pool when it asks (DictRequest.reader_pid), instead of in the reply.
  static constexpr uint64_t kBlockValueMin = 64 << 10;

  // Applies one operation to shard `request.dict_id()` (created by its first
  // PUT). A PUT item given as a block (DictRequest.value_refs) is taken over
  // from writer_pid, which must own it (FailedPrecondition otherwise); a GET
  // with reader_pid gets large values in new blocks owned by it (inline when
  // the pool has no room at once). InvalidArgument naming what is wrong (no dict_id, no op, keys and
  // values that do not pair up, GET/DELETE without exactly one key). A PUT
  // of several items that fails part way keeps the items stored before the
  // failure and says how many.
  absl::StatusOr<v1::DictReply> Apply(const v1::DictRequest& request);

  // Shards held and the values' bytes (for logs and tests).
  size_t shards() const;
  uint64_t value_bytes() const;

 private:
  // A value in a slab slot (slot.slab set) or in a block of its own.
  struct Value {
    common::BlockRef block;
    DictSlabs::Slot slot;
    uint64_t size = 0;
  };
  using Shard = absl::flat_hash_map<std::string, Value>;

  // Stores one item: a small value in a slab slot (a new slab taken from the
  // pool outside the lock when its class is full), a larger one in a block
  // of its own (allocated outside the lock: a full pool may make it wait).
  absl::Status Put(const std::string& dict_id, const std::string& key, const std::string& data);
  absl::Status PutSmall(const std::string& dict_id, const std::string& key, const std::string& data);
  // Stores the value already in `ref` (`size` bytes), taken over from `writer`.
  absl::Status PutBlock(const std::string& dict_id, const std::string& key,
                        const std::string& ref, uint64_t size, pid_t writer);
  // Appends one found value to `reply`: in a new block owned by `reader`
  // when it is large and reader > 0, else inline.
  absl::Status AddValueLocked(const Value& value, pid_t reader, v1::DictReply* reply)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts `value` under `key`, freeing the value it replaces.
  void StoreLocked(const std::string& dict_id, const std::string& key, const Value& value)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::string> ReadLocked(const Value& value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeLocked(const Value& value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  common::ShmPool* const pool_;
  const absl::Duration alloc_wait_;
  mutable absl::Mutex mu_;
  DictSlabs slabs_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Shard> shards_ ABSL_GUARDED_BY(mu_);
  uint64_t value_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_DICT_STORE_H_
