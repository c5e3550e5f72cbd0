// DictSlabs: small Dictionary values (agent/dict_store.h) packed many to a
// pool block. A value of up to kMaxSmallValue bytes takes a slot of the
// smallest power-of-two size class (32 B .. 2 KiB) that holds it, in a slab:
// one kSlabBytes block of the node's pool cut into slots of one class. So
// 10,000 small items take a few slabs instead of 10,000 blocks of the pool's
// smallest size (4 KiB each, and a trip through the shared allocator's lock
// for each), while the values stay in the pool (counted in its use, a full
// pool still the pool's error naming --shm-pool-mb).
//
// A slab whose last slot is released goes back to the pool at once, so a
// Dictionary's close() (DESTROY) leaves nothing of it in the pool. Not
// thread-safe: DictStore calls it under its mutex. Taking a slab from the
// pool (which may wait for room) is left to the caller, outside its lock:
// Take says when a class needs one, AddSlab adds it.
#ifndef DRAGON_AGENT_DICT_SLABS_H_
#define DRAGON_AGENT_DICT_SLABS_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "common/buddy_allocator.h"
#include "common/shm_pool.h"

namespace dragon::agent {

class DictSlabs {
 public:
  static constexpr size_t kMaxSmallValue = 2048;
  static constexpr uint64_t kSlabBytes = 64 << 10;
  static constexpr size_t kMinSlot = 32;
  static constexpr int kClasses = 7;  // 32, 64, ..., 2048

  struct Slab;
  // Where one small value lives.
  struct Slot {
    Slab* slab = nullptr;
    uint32_t index = 0;
  };

  explicit DictSlabs(common::ShmPool* pool) : pool_(pool) {}
  // Frees the blocks of the slabs still held (DictStore releases every value
  // first, so normally none).
  ~DictSlabs();
  DictSlabs(const DictSlabs&) = delete;
  DictSlabs& operator=(const DictSlabs&) = delete;

  static bool IsSmall(size_t size) { return size <= kMaxSmallValue; }

  // A free slot for a value of `size` (<= kMaxSmallValue) bytes, or none
  // when every slab of its class is full (then AddSlab, and Take again).
  std::optional<Slot> Take(size_t size);
  // Makes `block` (kSlabBytes of the pool, which this now owns) a slab of
  // `size`'s class. Resolve's error if the block cannot be reached (the
  // block is freed).
  absl::Status AddSlab(size_t size, const common::BlockRef& block);
  // The slot's bytes (its class's size) in the pool's mapping.
  char* Data(const Slot& slot) const;
  // Gives the slot back; a slab left empty goes back to the pool.
  void Release(const Slot& slot);

  // Slabs held (tests, logs).
  size_t slabs() const { return slabs_.size(); }

 private:
  static int ClassOf(size_t size);

  common::ShmPool* const pool_;
  absl::flat_hash_map<Slab*, std::unique_ptr<Slab>> slabs_;
  // Per class: the slabs with a free slot.
  std::array<absl::flat_hash_set<Slab*>, kClasses> open_;
};

struct DictSlabs::Slab {
  common::BlockRef block;
  char* base = nullptr;
  uint32_t slot_bytes = 0;
  int size_class = 0;
  std::vector<uint32_t> free;  // a stack: the lowest index on top
  uint32_t slots = 0;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_DICT_SLABS_H_
