// A buddy allocator whose whole state lives in a region the caller provides
// (docs/DESIGN.md, "shared-memory pool"): ShmPool puts that region in a shared
// mapping, so the state holds unit indices and never pointers, and every
// process that maps the pool, wherever, reads the same allocator.
//
// The space is cut into power-of-two blocks of units (`unit_bytes`, a power of
// two, e.g. 4 KiB). A request is rounded up to the next such block, so a block
// wastes less than half of itself (internal fragmentation < 50%); a freed block
// merges with its free buddy at once, so free space is only ever split where
// an allocated block sits (after everything is freed, the initial blocks are
// whole again). A capacity that is not a power of two of units starts as the
// largest aligned power-of-two blocks that tile it: the largest request it can
// ever satisfy is the largest of those, largest_possible_block().
//
// Not thread-safe: the caller serializes every call (ShmPool holds its robust
// process-shared mutex). The repair after a process died inside a call is
// Rebuild(); the order of the writes that makes it possible is explained in
// buddy_allocator.cc.
#ifndef DRAGON_COMMON_BUDDY_ALLOCATOR_H_
#define DRAGON_COMMON_BUDDY_ALLOCATOR_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dragon::common {

// A block as it travels between processes and in a protobuf bytes field:
// where it starts (bytes from the start of the pool's data), the length its
// allocator asked for, and which use of that place it is (`generation`
// changes every time the block is freed, so a reference kept after a free is
// refused even once the same place is handed out again).
struct BlockRef {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t generation = 0;

  static constexpr size_t kEncodedSize = 24;
  // Three little-endian uint64s: offset, length, generation.
  std::string Encode() const;
  static absl::StatusOr<BlockRef> Decode(absl::string_view bytes);

  friend bool operator==(const BlockRef& a, const BlockRef& b) {
    return a.offset == b.offset && a.length == b.length && a.generation == b.generation;
  }
  friend bool operator!=(const BlockRef& a, const BlockRef& b) { return !(a == b); }
};

// Unit indices are 32-bit so that a unit's table entry stays 24 bytes
// (0.6% of a 4 KiB unit); 2^32 - 1 units of 4 KiB is 16 TiB.
inline constexpr uint32_t kNoUnit = UINT32_MAX;
inline constexpr uint32_t kBuddyOrders = 33;  // block sizes 2^0 .. 2^32 units

enum class BuddyUnitState : uint8_t {
  kInterior = 0,   // not the first unit of a block; its other fields mean nothing
  kFree = 1,       // first unit of a free block
  kAllocated = 2,  // first unit of an allocated block
};

// One per unit. Only the entry of a block's first unit (its head) is read;
// the entries of the other units keep whatever they held when they last were
// heads, which is why `generation` survives merging and splitting.
struct BuddyUnit {
  uint64_t generation;
  int32_t owner;  // pid of the process the allocated block belongs to
  uint32_t next;  // free-list links (derived data: Rebuild recomputes them)
  uint32_t prev;
  uint8_t order;  // the block holds 2^order units
  BuddyUnitState state;
  uint8_t reserved[2];
};
static_assert(sizeof(BuddyUnit) == 24, "the unit table's layout is shared between processes");

// The start of the caller's region; the unit table follows it.
struct BuddyHeader {
  uint64_t layout_version;
  uint64_t unit_bytes;
  uint64_t num_units;
  uint32_t top_order;  // order of the largest block that fits
  uint32_t reserved;
  // Derived data, recomputed by Rebuild.
  uint64_t free_units;
  uint64_t blocks_in_use;
  uint32_t free_head[kBuddyOrders];
};

struct BuddyStats {
  uint64_t capacity_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t blocks_in_use = 0;
  uint64_t largest_free_block = 0;  // bytes; far below free_bytes means fragmented
};

// Test-only: called at every point where a call's change to the unit table
// becomes real (see buddy_allocator.cc), so that a test can stop a call
// there, as a killed process would, and check what Rebuild makes of it.
using BuddyCommitHook = void (*)();
void SetBuddyCommitHookForTest(BuddyCommitHook hook);

class BuddyAllocator {
 public:
  // How large the caller's region must be for a capacity of `num_units`.
  static uint64_t MetadataBytes(uint64_t num_units);

  // Lays out a new allocator over `metadata` (8-byte aligned, MetadataBytes()
  // long) for `capacity_bytes` rounded down to whole units, all of it free.
  static absl::StatusOr<BuddyAllocator> Format(void* metadata, uint64_t metadata_bytes,
                                               uint64_t capacity_bytes, uint64_t unit_bytes);
  // An allocator another process formatted; refuses a region whose header
  // does not fit in `metadata_bytes` or is not one.
  static absl::StatusOr<BuddyAllocator> Open(void* metadata, uint64_t metadata_bytes);

  // A block of at least `length` bytes (> 0) owned by `owner`, aligned to its
  // own size within the data; nullopt when no free block is large enough now.
  // A length above largest_possible_block() never fits (see BlockBytes).
  std::optional<BlockRef> Allocate(uint64_t length, int32_t owner);
  // Refuses a stale reference (freed, or freed and reused), one that is out
  // of range, or one whose length does not belong to that block.
  absl::Status Free(const BlockRef& ref);
  // Whether `ref` names an allocated block right now (same errors as Free).
  absl::Status Check(const BlockRef& ref) const;
  absl::Status SetOwner(const BlockRef& ref, int32_t owner);
  absl::StatusOr<int32_t> Owner(const BlockRef& ref) const;
  // Frees every block of `owner`; returns the bytes freed.
  uint64_t ReclaimOwner(int32_t owner);
  // The distinct owners of allocated blocks, ascending (a janitor's list of
  // processes to check). O(blocks): the walk jumps a block at a time.
  std::vector<int32_t> Owners() const;

  // After a process died in the middle of a call: recomputes the free lists
  // and counters from the unit table, merges free buddies it left unmerged,
  // and gives every free block a new generation. DataLoss if the table itself
  // is not a tiling of the space (then nothing can be trusted).
  absl::Status Rebuild();
  // Every invariant (tiling, lists, counters, no unmerged free buddies);
  // DataLoss naming the first one broken. O(units): for tests and repair.
  absl::Status Verify() const;

  BuddyStats Stats() const;
  // The size of the block a request of `length` bytes gets; 0 when none can
  // ever hold it.
  uint64_t BlockBytes(uint64_t length) const;
  uint64_t capacity_bytes() const { return header_->num_units * header_->unit_bytes; }
  uint64_t unit_bytes() const { return header_->unit_bytes; }
  uint64_t largest_possible_block() const {
    return (uint64_t{1} << header_->top_order) * header_->unit_bytes;
  }

 private:
  BuddyAllocator(BuddyHeader* header, BuddyUnit* units) : header_(header), units_(units) {}

  absl::StatusOr<uint32_t> HeadOf(const BlockRef& ref) const;
  std::optional<uint32_t> OrderFor(uint64_t length) const;
  uint64_t UnitsOf(uint32_t order) const { return uint64_t{1} << order; }
  uint32_t LargestOrderAt(uint64_t index) const;

  void PushFree(uint32_t index, uint32_t order);
  void Unlink(uint32_t index, uint32_t order);
  // Marks the block free and merges it with free buddies; returns its bytes.
  uint64_t Release(uint32_t index);
  void InsertMerging(uint32_t index, uint32_t order);
  absl::Status CheckTiling() const;

  BuddyHeader* header_;
  BuddyUnit* units_;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_BUDDY_ALLOCATOR_H_
