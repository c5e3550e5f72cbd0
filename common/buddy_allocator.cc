#include "common/buddy_allocator.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "absl/strings/str_cat.h"

namespace dragon::common {
namespace {

// Bumped whenever BuddyHeader or BuddyUnit change meaning.
constexpr uint64_t kLayoutVersion = 1;

// Why a process that dies inside a call leaves a table Rebuild can trust
// (ShmPool calls Rebuild when its robust mutex reports EOWNERDEAD):
//
// The truth is the unit table read as a walk: start at unit 0, read the head's
// order and state, jump 2^order units, repeat. Every step of every call
// changes what that walk sees with one store, made after the stores that
// prepare it:
//   split    the upper half's head entry is written first (the walk does not
//            read it yet: it is inside the block), then the lower half's order
//            shrinks;
//   merge    the lower buddy's order grows (both buddies are already free);
//            the upper's entry is marked interior afterwards (unread either way);
//   allocate the owner is written first, then the state becomes kAllocated;
//   free     the state becomes kFree, then the generation is bumped.
// So whenever the process stops, the walk tiles the space with free and
// allocated blocks exactly as before or after one step. The free lists and
// counters may be half-updated, which is why they are only derived data:
// Rebuild throws them away and recomputes them from the walk. What a dead
// process can leave besides: a block allocated whose reference never reached
// the caller (its owner is the dead process, so ReclaimOwner frees it), free
// buddies not yet merged (Rebuild merges them), and a freed block whose
// generation was not bumped yet (Rebuild bumps every free block's).
//
// Only the compiler can reorder these stores as the repairer sees them: a
// killed process stops at an instruction boundary, and everything it stored
// before reaches the next locker of the mutex through the kernel's robust
// futex handling and that locker's acquire. A signal fence orders the
// compiler without costing a CPU barrier.
std::atomic<BuddyCommitHook> commit_hook{nullptr};

inline void CommitPoint() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (BuddyCommitHook hook = commit_hook.load(std::memory_order_relaxed)) hook();
}

std::string Describe(const BlockRef& ref) {
  return absl::StrCat("block at offset ", ref.offset, " (length ", ref.length, ", generation ",
                      ref.generation, ")");
}

}  // namespace

void SetBuddyCommitHookForTest(BuddyCommitHook hook) { commit_hook.store(hook); }

std::string BlockRef::Encode() const {
  std::string out(kEncodedSize, '\0');
  const uint64_t fields[3] = {offset, length, generation};
  for (int f = 0; f < 3; ++f) {
    for (int b = 0; b < 8; ++b) out[f * 8 + b] = static_cast<char>((fields[f] >> (8 * b)) & 0xff);
  }
  return out;
}

absl::StatusOr<BlockRef> BlockRef::Decode(absl::string_view bytes) {
  if (bytes.size() != kEncodedSize) {
    return absl::InvalidArgumentError(absl::StrCat("a block reference is ", kEncodedSize,
                                                   " bytes, not ", bytes.size()));
  }
  uint64_t fields[3] = {0, 0, 0};
  for (int f = 0; f < 3; ++f) {
    for (int b = 0; b < 8; ++b) {
      fields[f] |= uint64_t{static_cast<unsigned char>(bytes[f * 8 + b])} << (8 * b);
    }
  }
  return BlockRef{fields[0], fields[1], fields[2]};
}

uint64_t BuddyAllocator::MetadataBytes(uint64_t num_units) {
  return sizeof(BuddyHeader) + num_units * sizeof(BuddyUnit);
}

absl::StatusOr<BuddyAllocator> BuddyAllocator::Format(void* metadata, uint64_t metadata_bytes,
                                                      uint64_t capacity_bytes,
                                                      uint64_t unit_bytes) {
  if (unit_bytes < 8 || (unit_bytes & (unit_bytes - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the block unit must be a power of two of at least 8 bytes, not ", unit_bytes));
  }
  const uint64_t num_units = capacity_bytes / unit_bytes;
  if (num_units == 0 || num_units >= kNoUnit) {
    return absl::InvalidArgumentError(absl::StrCat("a pool of ", capacity_bytes,
                                                   " bytes in units of ", unit_bytes,
                                                   " bytes must have 1 to 2^32-2 units"));
  }
  if (metadata_bytes < MetadataBytes(num_units) ||
      reinterpret_cast<uintptr_t>(metadata) % alignof(BuddyHeader) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("allocator metadata needs ",
                                                   MetadataBytes(num_units),
                                                   " bytes, 8-byte aligned; got ", metadata_bytes));
  }
  auto* header = static_cast<BuddyHeader*>(metadata);
  auto* units = reinterpret_cast<BuddyUnit*>(header + 1);
  header->layout_version = kLayoutVersion;
  header->unit_bytes = unit_bytes;
  header->num_units = num_units;
  header->top_order = 0;
  while ((uint64_t{1} << (header->top_order + 1)) <= num_units) ++header->top_order;
  header->reserved = 0;
  header->free_units = 0;
  header->blocks_in_use = 0;
  for (uint32_t& head : header->free_head) head = kNoUnit;
  for (uint64_t i = 0; i < num_units; ++i) {
    // Generation 0 is never valid, so a zeroed reference names nothing.
    units[i] = BuddyUnit{1, 0, kNoUnit, kNoUnit, 0, BuddyUnitState::kInterior, {0, 0}};
  }
  BuddyAllocator allocator(header, units);
  for (uint64_t i = 0; i < num_units;) {
    const uint32_t order = allocator.LargestOrderAt(i);
    units[i].order = static_cast<uint8_t>(order);
    units[i].state = BuddyUnitState::kFree;
    allocator.PushFree(static_cast<uint32_t>(i), order);
    header->free_units += allocator.UnitsOf(order);
    i += allocator.UnitsOf(order);
  }
  return allocator;
}

absl::StatusOr<BuddyAllocator> BuddyAllocator::Open(void* metadata, uint64_t metadata_bytes) {
  if (metadata_bytes < sizeof(BuddyHeader)) {
    return absl::DataLossError("allocator metadata is shorter than its header");
  }
  auto* header = static_cast<BuddyHeader*>(metadata);
  const uint64_t unit_bytes = header->unit_bytes;
  if (header->layout_version != kLayoutVersion) {
    return absl::FailedPreconditionError(absl::StrCat("allocator layout version ",
                                                      header->layout_version, ", expected ",
                                                      kLayoutVersion));
  }
  if (unit_bytes < 8 || (unit_bytes & (unit_bytes - 1)) != 0 || header->num_units == 0 ||
      header->num_units >= kNoUnit || metadata_bytes < MetadataBytes(header->num_units) ||
      header->top_order >= kBuddyOrders ||
      (uint64_t{1} << header->top_order) > header->num_units) {
    return absl::DataLossError("allocator metadata is inconsistent with its size");
  }
  return BuddyAllocator(header, reinterpret_cast<BuddyUnit*>(header + 1));
}

uint32_t BuddyAllocator::LargestOrderAt(uint64_t index) const {
  uint32_t order = header_->top_order;
  while (order > 0 &&
         (index % UnitsOf(order) != 0 || index + UnitsOf(order) > header_->num_units)) {
    --order;
  }
  return order;
}

std::optional<uint32_t> BuddyAllocator::OrderFor(uint64_t length) const {
  if (length == 0 || length > capacity_bytes()) return std::nullopt;
  const uint64_t units = (length + header_->unit_bytes - 1) / header_->unit_bytes;
  uint32_t order = 0;
  while (UnitsOf(order) < units) ++order;
  if (order > header_->top_order) return std::nullopt;
  return order;
}

uint64_t BuddyAllocator::BlockBytes(uint64_t length) const {
  std::optional<uint32_t> order = OrderFor(length);
  return order ? UnitsOf(*order) * header_->unit_bytes : 0;
}

void BuddyAllocator::PushFree(uint32_t index, uint32_t order) {
  BuddyUnit& unit = units_[index];
  unit.prev = kNoUnit;
  unit.next = header_->free_head[order];
  if (unit.next != kNoUnit) units_[unit.next].prev = index;
  header_->free_head[order] = index;
}

void BuddyAllocator::Unlink(uint32_t index, uint32_t order) {
  BuddyUnit& unit = units_[index];
  if (unit.prev != kNoUnit) {
    units_[unit.prev].next = unit.next;
  } else {
    header_->free_head[order] = unit.next;
  }
  if (unit.next != kNoUnit) units_[unit.next].prev = unit.prev;
  unit.next = unit.prev = kNoUnit;
}

std::optional<BlockRef> BuddyAllocator::Allocate(uint64_t length, int32_t owner) {
  std::optional<uint32_t> wanted = OrderFor(length);
  if (!wanted) return std::nullopt;
  uint32_t order = *wanted;
  while (order <= header_->top_order && header_->free_head[order] == kNoUnit) ++order;
  if (order > header_->top_order) return std::nullopt;
  const uint32_t index = header_->free_head[order];
  Unlink(index, order);
  while (order > *wanted) {
    --order;
    const uint32_t upper = index + static_cast<uint32_t>(UnitsOf(order));
    units_[upper].order = static_cast<uint8_t>(order);
    units_[upper].state = BuddyUnitState::kFree;
    units_[upper].owner = 0;
    CommitPoint();
    units_[index].order = static_cast<uint8_t>(order);
    CommitPoint();
    PushFree(upper, order);
  }
  units_[index].owner = owner;
  CommitPoint();
  units_[index].state = BuddyUnitState::kAllocated;
  CommitPoint();
  header_->free_units -= UnitsOf(order);
  header_->blocks_in_use += 1;
  return BlockRef{index * header_->unit_bytes, length, units_[index].generation};
}

absl::StatusOr<uint32_t> BuddyAllocator::HeadOf(const BlockRef& ref) const {
  if (ref.offset % header_->unit_bytes != 0 || ref.offset >= capacity_bytes()) {
    return absl::OutOfRangeError(absl::StrCat(Describe(ref), " is outside a pool of ",
                                              capacity_bytes(), " bytes or not at a block start"));
  }
  const uint32_t index = static_cast<uint32_t>(ref.offset / header_->unit_bytes);
  const BuddyUnit& unit = units_[index];
  if (unit.state != BuddyUnitState::kAllocated || unit.generation != ref.generation) {
    return absl::NotFoundError(absl::StrCat(
        Describe(ref), " is not allocated: it was freed",
        unit.state == BuddyUnitState::kAllocated ? " and handed out again" : ""));
  }
  const uint64_t block_bytes = UnitsOf(unit.order) * header_->unit_bytes;
  if (BlockBytes(ref.length) != block_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(ref), " does not match its block of ",
                                                   block_bytes, " bytes"));
  }
  return index;
}

absl::Status BuddyAllocator::Check(const BlockRef& ref) const { return HeadOf(ref).status(); }

absl::StatusOr<int32_t> BuddyAllocator::Owner(const BlockRef& ref) const {
  absl::StatusOr<uint32_t> index = HeadOf(ref);
  if (!index.ok()) return index.status();
  return units_[*index].owner;
}

absl::Status BuddyAllocator::SetOwner(const BlockRef& ref, int32_t owner) {
  absl::StatusOr<uint32_t> index = HeadOf(ref);
  if (!index.ok()) return index.status();
  units_[*index].owner = owner;
  return absl::OkStatus();
}

absl::Status BuddyAllocator::Free(const BlockRef& ref) {
  absl::StatusOr<uint32_t> index = HeadOf(ref);
  if (!index.ok()) return index.status();
  Release(*index);
  return absl::OkStatus();
}

uint64_t BuddyAllocator::Release(uint32_t index) {
  BuddyUnit& unit = units_[index];
  const uint32_t order = unit.order;
  unit.state = BuddyUnitState::kFree;
  CommitPoint();
  unit.generation += 1;
  unit.owner = 0;
  CommitPoint();
  header_->blocks_in_use -= 1;
  header_->free_units += UnitsOf(order);
  InsertMerging(index, order);
  return UnitsOf(order) * header_->unit_bytes;
}

void BuddyAllocator::InsertMerging(uint32_t index, uint32_t order) {
  // The buddy of a block is always the first unit of a block (a tiling of
  // aligned power-of-two blocks cannot have a larger block straddle it), so
  // reading its entry is reading a head.
  while (order < header_->top_order) {
    const uint64_t buddy = index ^ UnitsOf(order);
    if (buddy >= header_->num_units) break;
    const BuddyUnit& other = units_[buddy];
    if (other.state != BuddyUnitState::kFree || other.order != order) break;
    Unlink(static_cast<uint32_t>(buddy), order);
    const uint32_t lower = static_cast<uint32_t>(index < buddy ? index : buddy);
    const uint32_t upper = static_cast<uint32_t>(index < buddy ? buddy : index);
    units_[lower].order = static_cast<uint8_t>(order + 1);
    CommitPoint();
    units_[upper].state = BuddyUnitState::kInterior;
    index = lower;
    ++order;
  }
  PushFree(index, order);
}

uint64_t BuddyAllocator::ReclaimOwner(int32_t owner) {
  // Collected first: releasing merges blocks, and the walk must not step into
  // a block that a merge just made interior.
  std::vector<uint32_t> owned;
  for (uint64_t i = 0; i < header_->num_units; i += UnitsOf(units_[i].order)) {
    if (units_[i].state == BuddyUnitState::kAllocated && units_[i].owner == owner) {
      owned.push_back(static_cast<uint32_t>(i));
    }
  }
  uint64_t freed = 0;
  for (uint32_t index : owned) freed += Release(index);
  return freed;
}

std::vector<int32_t> BuddyAllocator::Owners() const {
  std::vector<int32_t> owners;
  for (uint64_t i = 0; i < header_->num_units; i += UnitsOf(units_[i].order)) {
    if (units_[i].state == BuddyUnitState::kAllocated) owners.push_back(units_[i].owner);
  }
  std::sort(owners.begin(), owners.end());
  owners.erase(std::unique(owners.begin(), owners.end()), owners.end());
  return owners;
}

absl::Status BuddyAllocator::CheckTiling() const {
  for (uint64_t i = 0; i < header_->num_units;) {
    const BuddyUnit& unit = units_[i];
    if (unit.state != BuddyUnitState::kFree && unit.state != BuddyUnitState::kAllocated) {
      return absl::DataLossError(absl::StrCat("unit ", i, " should start a block but is interior"));
    }
    if (unit.order > header_->top_order || i % UnitsOf(unit.order) != 0 ||
        i + UnitsOf(unit.order) > header_->num_units) {
      return absl::DataLossError(absl::StrCat("block at unit ", i, " of order ",
                                              unsigned{unit.order}, " does not fit"));
    }
    i += UnitsOf(unit.order);
  }
  return absl::OkStatus();
}

absl::Status BuddyAllocator::Rebuild() {
  if (absl::Status tiling = CheckTiling(); !tiling.ok()) return tiling;
  // Merge free buddies a dead Release left apart. One pass merges every pair
  // it meets; a merged block may then pair with its own buddy, hence the
  // passes (at most one per order).
  for (bool merged = true; merged;) {
    merged = false;
    for (uint64_t i = 0; i < header_->num_units; i += UnitsOf(units_[i].order)) {
      const uint32_t order = units_[i].order;
      const uint64_t upper = i + UnitsOf(order);
      if (units_[i].state != BuddyUnitState::kFree || order >= header_->top_order ||
          (i & UnitsOf(order)) != 0 || upper + UnitsOf(order) > header_->num_units) {
        continue;
      }
      if (units_[upper].state == BuddyUnitState::kFree && units_[upper].order == order) {
        units_[i].order = static_cast<uint8_t>(order + 1);
        CommitPoint();
        units_[upper].state = BuddyUnitState::kInterior;
        merged = true;
      }
    }
  }
  for (uint32_t& head : header_->free_head) head = kNoUnit;
  header_->free_units = 0;
  header_->blocks_in_use = 0;
  for (uint64_t i = 0; i < header_->num_units; i += UnitsOf(units_[i].order)) {
    BuddyUnit& unit = units_[i];
    if (unit.state == BuddyUnitState::kAllocated) {
      header_->blocks_in_use += 1;
      continue;
    }
    unit.generation += 1;
    unit.owner = 0;
    PushFree(static_cast<uint32_t>(i), unit.order);
    header_->free_units += UnitsOf(unit.order);
  }
  return absl::OkStatus();
}

absl::Status BuddyAllocator::Verify() const {
  if (absl::Status tiling = CheckTiling(); !tiling.ok()) return tiling;
  const uint64_t n = header_->num_units;
  std::vector<bool> is_head(n, false);
  uint64_t free_heads = 0, free_units = 0, allocated = 0;
  for (uint64_t i = 0; i < n; i += UnitsOf(units_[i].order)) {
    is_head[i] = true;
    if (units_[i].state == BuddyUnitState::kAllocated) {
      ++allocated;
    } else {
      ++free_heads;
      free_units += UnitsOf(units_[i].order);
    }
  }
  for (uint64_t i = 0; i < n; i += UnitsOf(units_[i].order)) {
    const uint32_t order = units_[i].order;
    const uint64_t buddy = i ^ UnitsOf(order);
    if (units_[i].state == BuddyUnitState::kFree && order < header_->top_order && buddy < n &&
        is_head[buddy] && units_[buddy].state == BuddyUnitState::kFree &&
        units_[buddy].order == order) {
      return absl::DataLossError(absl::StrCat("free buddies at units ", i, " and ", buddy,
                                              " were not merged"));
    }
  }
  uint64_t linked = 0;
  for (uint32_t order = 0; order < kBuddyOrders; ++order) {
    uint32_t previous = kNoUnit;
    for (uint32_t i = header_->free_head[order]; i != kNoUnit; i = units_[i].next) {
      if (i >= n || !is_head[i] || units_[i].state != BuddyUnitState::kFree ||
          units_[i].order != order || units_[i].prev != previous || ++linked > free_heads) {
        return absl::DataLossError(absl::StrCat("free list of order ", order,
                                                " is broken at unit ", i));
      }
      previous = i;
    }
  }
  if (linked != free_heads || free_units != header_->free_units ||
      allocated != header_->blocks_in_use) {
    return absl::DataLossError(absl::StrCat(
        "counters disagree with the table: ", linked, " of ", free_heads, " free blocks listed, ",
        header_->free_units, " free units counted (", free_units, " found), ",
        header_->blocks_in_use, " blocks in use counted (", allocated, " found)"));
  }
  return absl::OkStatus();
}

BuddyStats BuddyAllocator::Stats() const {
  BuddyStats stats;
  stats.capacity_bytes = capacity_bytes();
  stats.free_bytes = header_->free_units * header_->unit_bytes;
  stats.blocks_in_use = header_->blocks_in_use;
  for (uint32_t order = header_->top_order + 1; order-- > 0;) {
    if (header_->free_head[order] != kNoUnit) {
      stats.largest_free_block = UnitsOf(order) * header_->unit_bytes;
      break;
    }
  }
  return stats;
}

}  // namespace dragon::common
