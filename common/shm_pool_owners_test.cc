// ShmPool's lazily backed pools (ShmPoolOptions::reserve = false) and block
// ownership between processes: Allocate for another owner, TransferOwner,
// FreeIfOwner, Owners. The rest of the pool's tests are in shm_pool_test.cc.
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/shm_pool_test_util.h"

namespace dragon::common::shm_pool_test {
namespace {

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<ShmPool> MustCreateLazy(uint64_t size_bytes, uint64_t min_block = 4096) {
  ShmPoolOptions options;
  options.name = UniqueName();
  options.size_bytes = size_bytes;
  options.min_block = min_block;
  options.reserve = false;
  absl::StatusOr<std::unique_ptr<ShmPool>> pool = ShmPool::Create(options);
  INFO(pool.status().ToString());
  REQUIRE(pool.ok());
  return std::move(*pool);
}

// Bytes the file system holds for the file (what fallocate reserved).
uint64_t BackedBytes(const std::string& path) {
  struct stat file;
  REQUIRE(stat(path.c_str(), &file) == 0);
  return static_cast<uint64_t>(file.st_blocks) * 512;
}

double NowMicros() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec * 1e6 + now.tv_nsec / 1e3;
}

TEST_CASE("a reserve=false pool holds only its metadata until blocks are allocated") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreateLazy(64 * kMiB);
  CHECK_FALSE(pool->reserved());
  const uint64_t at_create = BackedBytes(pool->path());
  CHECK(at_create < kMiB);  // header and 16384 units of metadata: ~400 KiB

  absl::StatusOr<BlockRef> ref = pool->Allocate(8 * kMiB);
  REQUIRE(ref.ok());
  CHECK(BackedBytes(pool->path()) >= at_create + 8 * kMiB);
  Fill(*pool->Resolve(*ref), getpid(), 1);

  // A process that attached reserves its blocks too.
  const std::string path = pool->path();
  ExpectExit0(ForkChild([&]() -> int {
    absl::StatusOr<std::unique_ptr<ShmPool>> mine = ShmPool::Attach(path);
    if (!mine.ok() || (*mine)->reserved()) return 2;
    absl::StatusOr<BlockRef> theirs = (*mine)->Allocate(16 * kMiB);
    if (!theirs.ok()) return 3;
    Fill(*(*mine)->Resolve(*theirs), getpid(), 2);
    return (*mine)->Free(*theirs).ok() ? 0 : 4;
  }));
  CHECK(BackedBytes(pool->path()) >= at_create + 24 * kMiB);
  CHECK(Holds(*pool->Resolve(*ref), getpid(), 1));
  REQUIRE(pool->Free(*ref).ok());
  ExpectWhole(*pool);

  ShmPoolOptions options;
  options.name = UniqueName();
  options.size_bytes = kMiB;
  options.reserve = false;
  options.prefault = true;
  CHECK(ShmPool::Create(options).status().code() == absl::StatusCode::kInvalidArgument);

  std::unique_ptr<ShmPool> reserved = MustCreate(8 * kMiB);
  CHECK(reserved->reserved());
  CHECK(BackedBytes(reserved->path()) >= 8 * kMiB);
}

TEST_CASE("a block /dev/shm cannot hold fails in Allocate, is freed, and names the room") {
  NoLeftovers check;
  struct statvfs fs;
  REQUIRE(statvfs(kShm, &fs) == 0);
  const uint64_t fs_bytes = static_cast<uint64_t>(fs.f_blocks) * fs.f_frsize;
  uint64_t block = kMiB;
  while (block < fs_bytes) block *= 2;
  // A block larger than the whole file system: tmpfs refuses it at once,
  // without taking pages first. Units of 1 MiB keep the metadata small.
  std::unique_ptr<ShmPool> pool = MustCreateLazy(2 * block, kMiB);
  absl::StatusOr<BlockRef> ref = pool->Allocate(block);
  REQUIRE(ref.status().code() == absl::StatusCode::kResourceExhausted);
  const std::string message(ref.status().message());
  INFO(message);
  CHECK(absl::StrContains(message, absl::StrCat(block, " bytes")));
  CHECK(absl::StrContains(message, pool->path()));
  CHECK(absl::StrContains(message, absl::StrCat(kShm, " has ")));
  CHECK(absl::StrContains(message, "bytes free"));
  CHECK(absl::StrContains(message, "--shm-pool-mb"));
  ExpectWhole(*pool);
  CHECK(BackedBytes(pool->path()) < 8 * kMiB);
  CHECK(pool->Allocate(kMiB).ok());  // a block that fits still does
}

TEST_CASE("reserve=false: Allocate+Free of a 2 MiB block already reserved once stays cheap") {
  NoLeftovers check;
  for (bool reserve : {false, true}) {
    std::unique_ptr<ShmPool> pool = reserve ? MustCreate(64 * kMiB) : MustCreateLazy(64 * kMiB);
    const double fresh = NowMicros();
    absl::StatusOr<BlockRef> first = pool->Allocate(2 * kMiB);
    REQUIRE(first.ok());
    REQUIRE(pool->Free(*first).ok());
    fprintf(stderr, "reserve=%s: the first Allocate+Free of a 2 MiB block: %.2f us\n",
            reserve ? "true" : "false", NowMicros() - fresh);
    constexpr int kRounds = 2000;
    const double start = NowMicros();
    for (int round = 0; round < kRounds; ++round) {
      absl::StatusOr<BlockRef> ref = pool->Allocate(2 * kMiB);
      REQUIRE(ref.ok());
      REQUIRE(ref->offset == first->offset);  // the same, already reserved range
      REQUIRE(pool->Free(*ref).ok());
    }
    const double each = (NowMicros() - start) / kRounds;
    fprintf(stderr, "reserve=%s: Allocate+Free of a 2 MiB block: %.2f us\n",
            reserve ? "true" : "false", each);
    // Loose (a loaded machine), but below the ~50 us of a fallocate that
    // walks 512 pages again: the map of reserved units is skipping it.
    CHECK(each < 25);
  }
}

TEST_CASE("TransferOwner hands a block on only from its actual owner") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(kMiB);
  const pid_t self = getpid();
  absl::StatusOr<BlockRef> ref = pool->Allocate(10 << 10);
  REQUIRE(ref.ok());
  absl::Status wrong = pool->TransferOwner(*ref, 4242, 777);
  CHECK(wrong.code() == absl::StatusCode::kFailedPrecondition);
  INFO(wrong.message());
  CHECK(absl::StrContains(wrong.message(), absl::StrCat("offset ", ref->offset)));
  CHECK(absl::StrContains(wrong.message(), absl::StrCat("owned by pid ", self)));
  CHECK(absl::StrContains(wrong.message(), "not by pid 4242"));
  CHECK(absl::StrContains(wrong.message(), pool->path()));

  REQUIRE(pool->TransferOwner(*ref, self, 777).ok());
  CHECK(*pool->Owners() == std::vector<pid_t>{777});
  CHECK(*pool->ReclaimOwner(self) == 0);  // no longer ours to lose
  CHECK(pool->TransferOwner(*ref, self, 778).code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE(pool->TransferOwner(*ref, 777, self).ok());

  BlockRef forged = *ref;
  forged.offset = uint64_t{1} << 40;
  CHECK(pool->TransferOwner(forged, self, 1).code() == absl::StatusCode::kOutOfRange);
  REQUIRE(pool->Free(*ref).ok());
  CHECK(pool->TransferOwner(*ref, self, 1).code() == absl::StatusCode::kNotFound);
  ExpectWhole(*pool);
}

TEST_CASE("FreeIfOwner frees only its owner's live block; stale refs are false, forged errors") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(kMiB);
  const pid_t self = getpid();
  absl::StatusOr<BlockRef> ref = pool->Allocate(10 << 10);
  REQUIRE(ref.ok());
  absl::StatusOr<bool> freed = pool->FreeIfOwner(*ref, self + 1);  // someone else's
  REQUIRE(freed.ok());
  CHECK_FALSE(*freed);
  CHECK(pool->Resolve(*ref).ok());

  freed = pool->FreeIfOwner(*ref, self);
  REQUIRE(freed.ok());
  CHECK(*freed);
  CHECK(pool->Stats()->blocks_in_use == 0);
  freed = pool->FreeIfOwner(*ref, self);  // freed already
  REQUIRE(freed.ok());
  CHECK_FALSE(*freed);
  absl::StatusOr<BlockRef> again = pool->Allocate(10 << 10);  // the same place, reused
  REQUIRE(again.ok());
  REQUIRE(again->offset == ref->offset);
  freed = pool->FreeIfOwner(*ref, self);
  REQUIRE(freed.ok());
  CHECK_FALSE(*freed);
  CHECK(pool->Resolve(*again).ok());

  BlockRef forged = *again;
  forged.offset = uint64_t{1} << 40;
  CHECK(pool->FreeIfOwner(forged, self).status().code() == absl::StatusCode::kOutOfRange);
  forged = *again;
  forged.length = 300 << 10;  // not the length of that block
  CHECK(pool->FreeIfOwner(forged, self).status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(*pool->FreeIfOwner(*again, self));
  ExpectWhole(*pool);
}

TEST_CASE("Owners lists the processes holding blocks, for others too, until reclaimed") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreateLazy(4 * kMiB);
  const std::string path = pool->path();
  const pid_t parent = getpid();
  Pipe refs;
  // Each child allocates two blocks of its own and one for the parent, hands
  // that one's reference over, and waits to be killed.
  auto holder = [&]() -> int {
    absl::StatusOr<std::unique_ptr<ShmPool>> mine = ShmPool::Attach(path);
    if (!mine.ok()) return 2;
    absl::StatusOr<BlockRef> a = (*mine)->Allocate(4 << 10);
    absl::StatusOr<BlockRef> b = (*mine)->Allocate(64 << 10);
    absl::StatusOr<BlockRef> given = (*mine)->Allocate(8 << 10, absl::ZeroDuration(), parent);
    if (!a.ok() || !b.ok() || !given.ok()) return 3;
    if (write(refs.fds[1], given->Encode().data(), BlockRef::kEncodedSize) != 24) return 4;
    pause();
    return 5;
  };
  const pid_t first = ForkChild(holder);
  const pid_t second = ForkChild(holder);
  std::vector<BlockRef> given;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<BlockRef> ref = BlockRef::Decode(Receive(refs.fds[0], BlockRef::kEncodedSize));
    REQUIRE(ref.ok());
    given.push_back(*ref);
  }
  std::vector<pid_t> expected = {parent, first, second};
  std::sort(expected.begin(), expected.end());
  CHECK(*pool->Owners() == expected);
  CHECK(pool->Stats()->blocks_in_use == 6);

  KillChild(first);
  CHECK(*pool->ReclaimOwner(first) == (4 << 10) + (64 << 10));
  expected = {parent, second};
  std::sort(expected.begin(), expected.end());
  CHECK(*pool->Owners() == expected);
  KillChild(second);
  REQUIRE(pool->ReclaimOwner(second).ok());
  CHECK(*pool->Owners() == std::vector<pid_t>{parent});
  for (const BlockRef& ref : given) CHECK(*pool->FreeIfOwner(ref, parent));
  CHECK(pool->Owners()->empty());
  ExpectWhole(*pool);
}

TEST_CASE("a block handed from one process to another is freed by the receiver only") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(kMiB);
  const std::string path = pool->path();
  const pid_t parent = getpid();
  Pipe refs;
  const pid_t child = ForkChild([&]() -> int {
    absl::StatusOr<std::unique_ptr<ShmPool>> mine = ShmPool::Attach(path);
    if (!mine.ok()) return 2;
    absl::StatusOr<BlockRef> result = (*mine)->Allocate(20 << 10);
    if (!result.ok()) return 3;
    memcpy((*mine)->Resolve(*result)->data(), "result", 6);
    if (!(*mine)->TransferOwner(*result, getpid(), parent).ok()) return 4;
    // No longer ours: our own FreeIfOwner leaves it alone.
    absl::StatusOr<bool> freed = (*mine)->FreeIfOwner(*result, getpid());
    if (!freed.ok() || *freed) return 5;
    if (write(refs.fds[1], result->Encode().data(), BlockRef::kEncodedSize) != 24) return 6;
    return 0;
  });
  absl::StatusOr<BlockRef> result = BlockRef::Decode(Receive(refs.fds[0], BlockRef::kEncodedSize));
  REQUIRE(result.ok());
  ExpectExit0(child);
  CHECK(*pool->ReclaimOwner(child) == 0);
  CHECK(std::string(pool->Resolve(*result)->data(), 6) == "result");
  CHECK(*pool->FreeIfOwner(*result, parent));
  ExpectWhole(*pool);
}

TEST_CASE("Adopt takes over the pool of a dead creator, blocks of live owners intact") {
  NoLeftovers check;
  const std::string name = UniqueName();
  const std::string path = absl::StrCat(kShm, "/", name);
  const pid_t parent = getpid();
  Pipe refs, go;
  // The creator allocates a block for us, writes it, and dies without cleaning up.
  const pid_t creator = ForkChild([&]() -> int {
    ShmPoolOptions options;
    options.name = name;
    options.size_bytes = kMiB;
    options.reserve = false;
    absl::StatusOr<std::unique_ptr<ShmPool>> pool = ShmPool::Create(options);
    if (!pool.ok()) return 2;
    absl::StatusOr<BlockRef> ours = (*pool)->Allocate(8 << 10, absl::ZeroDuration(), parent);
    absl::StatusOr<BlockRef> its = (*pool)->Allocate(8 << 10);
    if (!ours.ok() || !its.ok()) return 3;
    memcpy((*pool)->Resolve(*ours)->data(), "kept", 4);
    (*pool)->MarkCreatorReady();  // its services were up before it died
    if (write(refs.fds[1], ours->Encode().data(), BlockRef::kEncodedSize) != 24) return 4;
    char wait;
    if (read(go.fds[0], &wait, 1) != 1) return 5;  // alive until the parent has tried
    _exit(0);  // with the pool still open: the file stays, as after a SIGKILL
  });
  absl::StatusOr<BlockRef> ours = BlockRef::Decode(Receive(refs.fds[0], BlockRef::kEncodedSize));
  REQUIRE(ours.ok());
  absl::StatusOr<std::unique_ptr<ShmPool>> early = ShmPool::Adopt(path);
  CHECK(absl::IsFailedPrecondition(early.status()));
  CHECK(absl::StrContains(early.status().message(), absl::StrCat("pid ", creator, ", is alive")));
  REQUIRE(write(go.fds[1], "x", 1) == 1);
  ExpectExit0(creator);
  REQUIRE(Exists(path));

  absl::StatusOr<std::unique_ptr<ShmPool>> adopted = ShmPool::Adopt(path);
  INFO(adopted.status().ToString());
  REQUIRE(adopted.ok());
  CHECK((*adopted)->creator());
  CHECK((*adopted)->creator_pid() == getpid());
  CHECK_FALSE((*adopted)->creator_ready());  // the adopter has not started its own yet
  CHECK(ShmPool::RemoveStale(kShm, Prefix()) == 0);  // its creator is alive again: us
  CHECK(std::string((*adopted)->Resolve(*ours)->data(), 4) == "kept");
  CHECK(*(*adopted)->ReclaimOwner(creator) == 8 << 10);  // the dead creator's own block
  CHECK(*(*adopted)->FreeIfOwner(*ours, parent));
  ExpectWhole(**adopted);
  adopted->reset();  // the adopter removes the file, as the creator would have
  CHECK_FALSE(Exists(path));
}

TEST_CASE("MarkCreatorReady is seen by every process attached to the pool, once") {
  NoLeftovers check;
  ShmPoolOptions options;
  options.name = UniqueName();
  options.size_bytes = kMiB;
  absl::StatusOr<std::unique_ptr<ShmPool>> pool = ShmPool::Create(options);
  REQUIRE(pool.ok());
  absl::StatusOr<std::unique_ptr<ShmPool>> other = ShmPool::Attach((*pool)->path());
  REQUIRE(other.ok());
  CHECK_FALSE((*pool)->creator_ready());
  CHECK_FALSE((*other)->creator_ready());
  const pid_t child = ForkChild([&]() -> int {
    absl::StatusOr<std::unique_ptr<ShmPool>> seen = ShmPool::Attach((*pool)->path());
    if (!seen.ok()) return 2;
    // Waits for the parent's mark through its own mapping (bounded by the test's timeout).
    while (!(*seen)->creator_ready()) usleep(1000);
    return (*seen)->huge_pages() == (*pool)->huge_pages() ? 0 : 3;  // the other flags kept
  });
  (*pool)->MarkCreatorReady();
  (*pool)->MarkCreatorReady();  // idempotent
  ExpectExit0(child);
  CHECK((*other)->creator_ready());
  absl::StatusOr<std::unique_ptr<ShmPool>> later = ShmPool::Attach((*pool)->path());
  REQUIRE(later.ok());
  CHECK((*later)->reserved());  // the creation flags are kept beside the new bit
  CHECK((*later)->creator_ready());
}

}  // namespace
}  // namespace dragon::common::shm_pool_test
