#include "common/buddy_allocator.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace dragon::common {
namespace {

constexpr uint64_t kUnit = 4096;

// An allocator over process memory: the algorithm does not care where its
// region is, so these tests need no shared mapping.
struct Arena {
  explicit Arena(uint64_t capacity, uint64_t unit = kUnit)
      : metadata(BuddyAllocator::MetadataBytes(capacity / unit) / 8 + 1),
        allocator(Format(capacity, unit)) {}

  BuddyAllocator Format(uint64_t capacity, uint64_t unit) {
    absl::StatusOr<BuddyAllocator> made =
        BuddyAllocator::Format(metadata.data(), metadata.size() * 8, capacity, unit);
    REQUIRE(made.ok());
    return *made;
  }
  BuddyHeader& header() { return *reinterpret_cast<BuddyHeader*>(metadata.data()); }
  BuddyUnit& unit(uint64_t offset) {
    return reinterpret_cast<BuddyUnit*>(&header() + 1)[offset / header().unit_bytes];
  }

  std::vector<uint64_t> metadata;
  BuddyAllocator allocator;
};

BlockRef MustAllocate(BuddyAllocator& allocator, uint64_t length, int32_t owner = 1) {
  std::optional<BlockRef> ref = allocator.Allocate(length, owner);
  REQUIRE(ref.has_value());
  return *ref;
}

TEST_CASE("a new allocator is one free block of its whole capacity") {
  Arena arena(1 << 20);
  BuddyStats stats = arena.allocator.Stats();
  CHECK(stats.capacity_bytes == 1 << 20);
  CHECK(stats.free_bytes == 1 << 20);
  CHECK(stats.largest_free_block == 1 << 20);
  CHECK(stats.blocks_in_use == 0);
  CHECK(arena.allocator.largest_possible_block() == 1 << 20);
  CHECK(arena.allocator.Verify().ok());
}

TEST_CASE("a small block splits the space down to it and merges back when freed") {
  Arena arena(16 * kUnit);
  BlockRef ref = MustAllocate(arena.allocator, 1);
  CHECK(ref.offset == 0);
  CHECK(ref.length == 1);
  BuddyStats stats = arena.allocator.Stats();
  CHECK(stats.free_bytes == 15 * kUnit);
  CHECK(stats.largest_free_block == 8 * kUnit);  // halves of 8, 4, 2, 1 units left free
  CHECK(stats.blocks_in_use == 1);
  CHECK(arena.allocator.Verify().ok());
  // Its buddy is the next unit: taken next, since the smallest free block wins.
  BlockRef second = MustAllocate(arena.allocator, kUnit);
  CHECK(second.offset == kUnit);
  REQUIRE(arena.allocator.Free(ref).ok());
  REQUIRE(arena.allocator.Free(second).ok());
  stats = arena.allocator.Stats();
  CHECK(stats.free_bytes == 16 * kUnit);
  CHECK(stats.largest_free_block == 16 * kUnit);
  CHECK(arena.allocator.Verify().ok());
}

TEST_CASE("every size class gets a block of its rounded size, aligned to that size") {
  Arena arena(1 << 20);
  for (uint64_t block = kUnit; block <= (1 << 20); block *= 2) {
    for (uint64_t length : {block / 2 + 1, block - 1, block}) {
      CHECK(arena.allocator.BlockBytes(length) == block);
      BlockRef ref = MustAllocate(arena.allocator, length);
      CHECK(ref.length == length);
      CHECK(ref.offset % block == 0);
      CHECK(arena.allocator.Stats().free_bytes == (1 << 20) - block);
      REQUIRE(arena.allocator.Free(ref).ok());
    }
  }
  CHECK(arena.allocator.BlockBytes(1) == kUnit);
  CHECK(arena.allocator.BlockBytes((1 << 20) + 1) == 0);
  CHECK_FALSE(arena.allocator.Allocate(0, 1).has_value());
  CHECK(arena.allocator.Verify().ok());
}

TEST_CASE("a full pool refuses until a block is freed") {
  Arena arena(64 * kUnit);
  std::vector<BlockRef> refs;
  for (int i = 0; i < 64; ++i) refs.push_back(MustAllocate(arena.allocator, kUnit));
  CHECK(arena.allocator.Stats().free_bytes == 0);
  CHECK(arena.allocator.Stats().largest_free_block == 0);
  CHECK_FALSE(arena.allocator.Allocate(1, 1).has_value());
  REQUIRE(arena.allocator.Free(refs[17]).ok());
  BlockRef again = MustAllocate(arena.allocator, 100);
  CHECK(again.offset == refs[17].offset);
  CHECK_FALSE(arena.allocator.Allocate(2 * kUnit, 1).has_value());
  CHECK(arena.allocator.Verify().ok());
}

TEST_CASE("a stale reference is refused, and reuse of the same place changes the generation") {
  Arena arena(8 * kUnit);
  BlockRef ref = MustAllocate(arena.allocator, 3 * kUnit);
  REQUIRE(arena.allocator.Check(ref).ok());
  REQUIRE(arena.allocator.Free(ref).ok());
  absl::Status twice = arena.allocator.Free(ref);
  CHECK(twice.code() == absl::StatusCode::kNotFound);
  CHECK(std::string(twice.message()).find("was freed") != std::string::npos);
  CHECK(arena.allocator.Check(ref).code() == absl::StatusCode::kNotFound);

  BlockRef reused = MustAllocate(arena.allocator, 3 * kUnit);
  CHECK(reused.offset == ref.offset);
  CHECK(reused.generation != ref.generation);
  absl::Status stale = arena.allocator.Check(ref);
  CHECK(stale.code() == absl::StatusCode::kNotFound);
  CHECK(std::string(stale.message()).find("handed out again") != std::string::npos);
  CHECK(arena.allocator.Free(ref).code() == absl::StatusCode::kNotFound);
  CHECK(arena.allocator.SetOwner(ref, 7).code() == absl::StatusCode::kNotFound);
  CHECK(arena.allocator.Check(reused).ok());

  // A block merged away and split out again still has a new generation.
  BlockRef small = MustAllocate(arena.allocator, kUnit);  // offset 4 units
  REQUIRE(arena.allocator.Free(small).ok());
  REQUIRE(arena.allocator.Free(reused).ok());
  BlockRef big = MustAllocate(arena.allocator, 8 * kUnit);
  REQUIRE(arena.allocator.Free(big).ok());
  for (int i = 0; i < 5; ++i) {
    BlockRef again = MustAllocate(arena.allocator, kUnit);
    CHECK((again.offset != small.offset || again.generation != small.generation));
  }
  CHECK(arena.allocator.Check(small).code() == absl::StatusCode::kNotFound);
}

TEST_CASE("references out of range, off a block start, or of another length are refused") {
  Arena arena(8 * kUnit);
  BlockRef ref = MustAllocate(arena.allocator, 2 * kUnit);
  CHECK(arena.allocator.Check({8 * kUnit, 1, ref.generation}).code() ==
        absl::StatusCode::kOutOfRange);
  CHECK(arena.allocator.Check({~uint64_t{0} - 4095, 1, ref.generation}).code() ==
        absl::StatusCode::kOutOfRange);
  CHECK(arena.allocator.Check({ref.offset + 1, 1, ref.generation}).code() ==
        absl::StatusCode::kOutOfRange);
  // Inside the block but not its start: that unit is no block of its own.
  CHECK(arena.allocator.Check({ref.offset + kUnit, kUnit, ref.generation}).code() ==
        absl::StatusCode::kNotFound);
  CHECK(arena.allocator.Check({ref.offset, 1, ref.generation}).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(arena.allocator.Check({ref.offset, 3 * kUnit, ref.generation}).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(arena.allocator.Check({ref.offset, 2 * kUnit, 0}).code() == absl::StatusCode::kNotFound);
  CHECK(arena.allocator.Check(ref).ok());
}

TEST_CASE("a reference encodes to 24 bytes and back") {
  BlockRef ref{0x0123456789abcdef, 42, 0xfedcba9876543210};
  std::string bytes = ref.Encode();
  CHECK(bytes.size() == 24);
  absl::StatusOr<BlockRef> back = BlockRef::Decode(bytes);
  REQUIRE(back.ok());
  CHECK(*back == ref);
  CHECK(BlockRef::Decode(bytes.substr(1)).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("a capacity that is not a power of two is tiled by the largest aligned blocks") {
  Arena arena(13 * kUnit);  // 8 + 4 + 1 units
  CHECK(arena.allocator.largest_possible_block() == 8 * kUnit);
  CHECK(arena.allocator.Stats().free_bytes == 13 * kUnit);
  CHECK(arena.allocator.BlockBytes(9 * kUnit) == 0);
  CHECK_FALSE(arena.allocator.Allocate(9 * kUnit, 1).has_value());
  BlockRef eight = MustAllocate(arena.allocator, 8 * kUnit);
  BlockRef four = MustAllocate(arena.allocator, 4 * kUnit);
  BlockRef one = MustAllocate(arena.allocator, kUnit);
  CHECK(eight.offset == 0);
  CHECK(four.offset == 8 * kUnit);
  CHECK(one.offset == 12 * kUnit);
  CHECK_FALSE(arena.allocator.Allocate(1, 1).has_value());
  for (const BlockRef& ref : {one, eight, four}) REQUIRE(arena.allocator.Free(ref).ok());
  CHECK(arena.allocator.Stats().free_bytes == 13 * kUnit);
  CHECK(arena.allocator.Stats().largest_free_block == 8 * kUnit);
  CHECK(arena.allocator.Verify().ok());
}

TEST_CASE("after random allocations and frees, freeing everything leaves one whole block") {
  constexpr uint64_t kCapacity = 4 << 20;
  Arena arena(kCapacity);
  std::mt19937_64 random(20261206);
  std::map<uint64_t, BlockRef> live;  // by offset: overlaps show as neighbours
  uint64_t allocated_bytes = 0;
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || random() % 100 < 55) {
      const uint64_t length = 1 + random() % (random() % 8 == 0 ? 512 * 1024 : 16 * 1024);
      std::optional<BlockRef> ref = arena.allocator.Allocate(length, 1);
      if (!ref) {
        // Full: the pool must really lack a block that large.
        CHECK(arena.allocator.Stats().largest_free_block < arena.allocator.BlockBytes(length));
        continue;
      }
      const uint64_t block = arena.allocator.BlockBytes(length);
      auto next = live.lower_bound(ref->offset);
      if (next != live.end()) REQUIRE(ref->offset + block <= next->first);
      if (next != live.begin()) {
        const BlockRef& before = std::prev(next)->second;
        REQUIRE(before.offset + arena.allocator.BlockBytes(before.length) <= ref->offset);
      }
      live[ref->offset] = *ref;
      allocated_bytes += block;
    } else {
      auto it = live.begin();
      std::advance(it, random() % live.size());
      allocated_bytes -= arena.allocator.BlockBytes(it->second.length);
      REQUIRE(arena.allocator.Free(it->second).ok());
      live.erase(it);
    }
    REQUIRE(arena.allocator.Stats().free_bytes == kCapacity - allocated_bytes);
    if (step % 1000 == 0) REQUIRE(arena.allocator.Verify().ok());
  }
  for (const auto& [offset, ref] : live) REQUIRE(arena.allocator.Free(ref).ok());
  BuddyStats stats = arena.allocator.Stats();
  CHECK(stats.free_bytes == kCapacity);
  CHECK(stats.largest_free_block == kCapacity);
  CHECK(stats.blocks_in_use == 0);
  CHECK(arena.allocator.Verify().ok());
}

TEST_CASE("ReclaimOwner frees exactly the blocks of that owner") {
  Arena arena(64 * kUnit);
  BlockRef mine = MustAllocate(arena.allocator, kUnit, 100);
  BlockRef theirs = MustAllocate(arena.allocator, 3 * kUnit, 200);
  BlockRef handed = MustAllocate(arena.allocator, 2 * kUnit, 200);
  REQUIRE(arena.allocator.SetOwner(handed, 100).ok());
  CHECK(*arena.allocator.Owner(handed) == 100);
  CHECK(arena.allocator.ReclaimOwner(200) == 4 * kUnit);
  CHECK(arena.allocator.Check(theirs).code() == absl::StatusCode::kNotFound);
  CHECK(arena.allocator.Check(mine).ok());
  CHECK(arena.allocator.Check(handed).ok());
  CHECK(arena.allocator.ReclaimOwner(200) == 0);
  CHECK(arena.allocator.ReclaimOwner(100) == 3 * kUnit);
  CHECK(arena.allocator.Stats().largest_free_block == 64 * kUnit);
  CHECK(arena.allocator.Verify().ok());
}

TEST_CASE("Owners lists each owner of an allocated block once, and none of free ones") {
  Arena arena(64 * kUnit);
  CHECK(arena.allocator.Owners().empty());
  BlockRef big = MustAllocate(arena.allocator, 16 * kUnit, 300);
  MustAllocate(arena.allocator, kUnit, 100);
  BlockRef gone = MustAllocate(arena.allocator, 2 * kUnit, 200);
  MustAllocate(arena.allocator, 4 * kUnit, 100);
  CHECK(arena.allocator.Owners() == std::vector<int32_t>{100, 200, 300});
  REQUIRE(arena.allocator.Free(gone).ok());
  REQUIRE(arena.allocator.SetOwner(big, 100).ok());
  CHECK(arena.allocator.Owners() == std::vector<int32_t>{100});
  arena.allocator.ReclaimOwner(100);
  CHECK(arena.allocator.Owners().empty());
  CHECK(arena.allocator.Verify().ok());
}

// The states a process killed inside a call can leave (see the write order in
// buddy_allocator.cc), made by hand: Rebuild must turn each into a pool that
// passes Verify and loses nothing but what the dead process owned.
TEST_CASE("Rebuild repairs what a process killed mid-call leaves") {
  Arena arena(16 * kUnit);
  BlockRef kept = MustAllocate(arena.allocator, kUnit, 100);

  SECTION("lists and counters half-updated") {
    BlockRef other = MustAllocate(arena.allocator, 2 * kUnit, 100);
    for (uint32_t& head : arena.header().free_head) head = kNoUnit;
    arena.header().free_units = 12345;
    arena.header().blocks_in_use = 0;
    CHECK_FALSE(arena.allocator.Verify().ok());
    REQUIRE(arena.allocator.Rebuild().ok());
    CHECK(arena.allocator.Check(other).ok());
    CHECK(arena.allocator.Stats().free_bytes == 13 * kUnit);
    CHECK(arena.allocator.Stats().blocks_in_use == 2);
  }
  SECTION("freed (state written) but neither bumped, merged nor listed") {
    BlockRef freed = MustAllocate(arena.allocator, kUnit, 100);  // the buddy of `kept`
    arena.unit(freed.offset).state = BuddyUnitState::kFree;
    REQUIRE(arena.allocator.Rebuild().ok());
    CHECK(arena.allocator.Check(freed).code() == absl::StatusCode::kNotFound);
    BlockRef next = MustAllocate(arena.allocator, kUnit, 100);
    CHECK(next.offset == freed.offset);
    CHECK(next.generation != freed.generation);
  }
  SECTION("split half-done: the upper half written, the block not yet shrunk") {
    // A free 8-unit block at 8: write its upper half as a dead split would.
    arena.unit(12 * kUnit).order = 2;
    arena.unit(12 * kUnit).state = BuddyUnitState::kFree;
    arena.header().free_head[3] = kNoUnit;  // Allocate unlinks before it splits
    REQUIRE(arena.allocator.Rebuild().ok());
    CHECK(arena.allocator.Stats().free_bytes == 15 * kUnit);
  }
  SECTION("allocated but the reference never returned: the dead owner's to reclaim") {
    BlockRef lost = MustAllocate(arena.allocator, 4 * kUnit, 300);
    arena.header().free_units = 0;
    REQUIRE(arena.allocator.Rebuild().ok());
    CHECK(arena.allocator.ReclaimOwner(300) == 4 * kUnit);
    CHECK(arena.allocator.Check(lost).code() == absl::StatusCode::kNotFound);
  }
  SECTION("a table that does not tile the space is data loss, not a guess") {
    arena.unit(0).order = 9;
    CHECK(arena.allocator.Rebuild().code() == absl::StatusCode::kDataLoss);
    return;
  }
  REQUIRE(arena.allocator.Verify().ok());
  REQUIRE(arena.allocator.Free(kept).ok());
  arena.allocator.ReclaimOwner(100);
  CHECK(arena.allocator.Stats().free_bytes == 16 * kUnit);
  CHECK(arena.allocator.Stats().largest_free_block == 16 * kUnit);
  CHECK(arena.allocator.Verify().ok());
}

// A call stopped at each of its commit points in turn, as a process killed
// there leaves it: Rebuild must make a pool that passes Verify, keeps every
// other block, and is whole again once the dead caller's blocks are reclaimed.
struct Stopped {};
int stop_at = 0;
int commits_seen = 0;
void StopAtCommit() {
  if (++commits_seen == stop_at) throw Stopped{};
}

TEST_CASE("a call stopped at any commit point is repaired by Rebuild") {
  enum Call { kAllocateSplitting, kFreeMerging, kReclaimSeveral };
  for (Call call : {kAllocateSplitting, kFreeMerging, kReclaimSeveral}) {
    INFO("call " << call);
    bool completed = false;
    for (stop_at = 1; !completed; ++stop_at) {
      INFO("stopped at commit point " << stop_at);
      Arena arena(64 * kUnit);
      std::vector<BlockRef> kept;  // blocks the call does not touch
      BlockRef target;             // the block the call frees
      if (call == kAllocateSplitting) {
        kept.push_back(MustAllocate(arena.allocator, 32 * kUnit, 1));
      } else {
        // Free blocks of 1, 2, 4 and 8 units beside `target` (unit 0): freeing
        // it merges four times; the 16-unit block at 16 stays allocated.
        target = MustAllocate(arena.allocator, kUnit, 2);
        std::vector<BlockRef> gaps;
        for (uint64_t units : {1, 2, 4, 8}) {
          gaps.push_back(MustAllocate(arena.allocator, units * kUnit, 1));
        }
        kept.push_back(MustAllocate(arena.allocator, 16 * kUnit, 1));
        REQUIRE(arena.allocator.Free(gaps[0]).ok());  // unit 1 stays free: 2, 4, 8 too
        for (size_t i = 1; i < gaps.size(); ++i) REQUIRE(arena.allocator.Free(gaps[i]).ok());
        REQUIRE(arena.allocator.Verify().ok());
      }
      commits_seen = 0;
      SetBuddyCommitHookForTest(StopAtCommit);
      bool call_succeeded = false;  // checked outside: Catch2's macros catch exceptions
      try {
        if (call == kAllocateSplitting) {
          call_succeeded = arena.allocator.Allocate(1, 3).has_value();
        } else if (call == kFreeMerging) {
          call_succeeded = arena.allocator.Free(target).ok();
        } else {
          call_succeeded =
              arena.allocator.ReclaimOwner(2) > 0 && arena.allocator.ReclaimOwner(1) > 0;
        }
        completed = true;
      } catch (const Stopped&) {
      }
      SetBuddyCommitHookForTest(nullptr);
      if (completed) CHECK(call_succeeded);
      REQUIRE(arena.allocator.Rebuild().ok());
      REQUIRE(arena.allocator.Verify().ok());
      if (call != kReclaimSeveral) {
        for (const BlockRef& ref : kept) CHECK(arena.allocator.Check(ref).ok());
      }
      if (call == kFreeMerging) CHECK_FALSE(arena.allocator.Check(target).ok());
      for (int32_t owner : {1, 2, 3}) arena.allocator.ReclaimOwner(owner);
      CHECK(arena.allocator.Stats().free_bytes == 64 * kUnit);
      CHECK(arena.allocator.Stats().largest_free_block == 64 * kUnit);
      CHECK(arena.allocator.Verify().ok());
    }
    CHECK(stop_at > 3);  // the call did pass several commit points
  }
}

}  // namespace
}  // namespace dragon::common
