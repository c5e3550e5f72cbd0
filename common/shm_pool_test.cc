#include "common/shm_pool.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/shm_pool_test_util.h"

namespace dragon::common::shm_pool_test {
namespace {

TEST_CASE("a pool is made 0600, shared by path, and removed by its creator only") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  struct stat file;
  REQUIRE(stat(pool->path().c_str(), &file) == 0);
  CHECK((file.st_mode & 0777) == 0600);
  CHECK(pool->creator());
  CHECK(pool->creator_pid() == getpid());
  CHECK(pool->capacity_bytes() == 1 << 20);

  absl::StatusOr<std::unique_ptr<ShmPool>> other = ShmPool::Attach(pool->path());
  REQUIRE(other.ok());
  CHECK_FALSE((*other)->creator());
  absl::StatusOr<BlockRef> ref = pool->Allocate(1000);
  REQUIRE(ref.ok());
  absl::StatusOr<absl::Span<char>> there = (*other)->Resolve(*ref);
  REQUIRE(there.ok());
  CHECK(there->size() == 1000);
  CHECK(reinterpret_cast<uintptr_t>(there->data()) % 4096 == 0);
  memcpy(there->data(), "hello", 5);
  CHECK(std::string(pool->Resolve(*ref)->data(), 5) == "hello");

  ShmPoolOptions again;
  again.name = pool->path().substr(strlen(kShm) + 1);
  again.size_bytes = 1 << 20;
  absl::Status exists = ShmPool::Create(again).status();
  CHECK(exists.code() == absl::StatusCode::kAlreadyExists);
  CHECK(absl::StrContains(exists.message(), pool->path()));

  REQUIRE((*other)->Free(*ref).ok());
  absl::Status twice = pool->Free(*ref);
  CHECK(twice.code() == absl::StatusCode::kNotFound);
  CHECK(absl::StrContains(twice.message(), pool->path()));
  CHECK(pool->Resolve(*ref).status().code() == absl::StatusCode::kNotFound);
  CHECK(pool->Resolve({uint64_t{1} << 40, 10, 1}).status().code() ==
        absl::StatusCode::kOutOfRange);

  // A forked copy of the creator's object does not remove the file.
  ExpectExit0(ForkChild([&] {
    pool.reset();
    return 0;
  }));
  CHECK(Exists(pool->path()));
  other->reset();
  CHECK(Exists(pool->path()));
  const std::string path = pool->path();
  pool.reset();
  CHECK_FALSE(Exists(path));
}

TEST_CASE("Attach refuses a missing file, a non-pool and another version, naming the path") {
  NoLeftovers check;
  const std::string missing = absl::StrCat(kShm, "/", UniqueName());
  absl::Status status = ShmPool::Attach(missing).status();
  CHECK(status.code() == absl::StatusCode::kNotFound);
  CHECK(absl::StrContains(status.message(), missing));

  for (size_t size : {size_t{10}, size_t{1 << 16}}) {
    const std::string junk = absl::StrCat(kShm, "/", UniqueName());
    std::ofstream(junk) << std::string(size, 'x');
    status = ShmPool::Attach(junk).status();
    CHECK(status.code() == absl::StatusCode::kFailedPrecondition);
    CHECK(absl::StrContains(status.message(), junk));
    CHECK(absl::StrContains(status.message(), "not a Dragon shared-memory pool"));
    unlink(junk.c_str());
  }

  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  const int fd = open(pool->path().c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  const uint32_t version = 99;  // right after the 8-byte magic
  REQUIRE(pwrite(fd, &version, sizeof(version), 8) == sizeof(version));
  close(fd);
  status = ShmPool::Attach(pool->path()).status();
  CHECK(status.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(status.message(), pool->path()));
  CHECK(absl::StrContains(status.message(), "version 99"));
}

TEST_CASE("a request no block can hold fails at once, naming the sizes and the option") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(3 << 20);  // blocks of at most 2 MiB
  for (uint64_t size : {uint64_t{5} << 20, (uint64_t{5} << 19)}) {
    const absl::Time start = absl::Now();
    absl::Status status = pool->Allocate(size, absl::Seconds(5)).status();
    CHECK(absl::Now() - start < absl::Seconds(1));
    CHECK(status.code() == absl::StatusCode::kResourceExhausted);
    const std::string message(status.message());
    INFO(message);
    CHECK(absl::StrContains(message, absl::StrCat(size, " bytes")));
    CHECK(absl::StrContains(message, absl::StrCat(3 << 20, " bytes")));
    CHECK(absl::StrContains(message, "--shm-pool-mb"));
    CHECK(absl::StrContains(message, pool->path()));
  }
  CHECK(pool->Allocate(0).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(pool->Allocate(2 << 20).ok());
}

TEST_CASE("a pool the directory cannot hold fails at creation, not with SIGBUS later") {
  NoLeftovers check;
  struct statvfs fs;
  REQUIRE(statvfs(kShm, &fs) == 0);
  ShmPoolOptions options;
  options.name = UniqueName();
  // Larger than the whole file system: the kernel refuses before touching a page.
  options.size_bytes = static_cast<uint64_t>(fs.f_blocks) * fs.f_frsize + (uint64_t{1} << 30);
  absl::Status status = ShmPool::Create(options).status();
  CHECK(status.code() == absl::StatusCode::kResourceExhausted);
  INFO(status.message());
  CHECK(absl::StrContains(status.message(), options.name));
  CHECK(absl::StrContains(status.message(), "--shm-pool-mb"));

  options.size_bytes = 1 << 20;
  options.min_block = 100;
  CHECK(ShmPool::Create(options).status().code() == absl::StatusCode::kInvalidArgument);
  options.min_block = 4096;
  options.name = "a/b";
  CHECK(ShmPool::Create(options).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("prefault and huge pages: the pool works, and reports whether huge pages took") {
  NoLeftovers check;
  ShmPoolOptions options;
  options.name = UniqueName();
  options.size_bytes = 4 << 20;
  options.prefault = true;
  options.huge_pages = true;
  absl::StatusOr<std::unique_ptr<ShmPool>> pool = ShmPool::Create(options);
  REQUIRE(pool.ok());
  std::ifstream setting("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string text((std::istreambuf_iterator<char>(setting)), std::istreambuf_iterator<char>());
  bool allowed = false;
  for (const char* word : {"[always]", "[advise]", "[within_size]", "[force]"}) {
    allowed = allowed || absl::StrContains(text, word);
  }
  CHECK((*pool)->huge_pages() == allowed);
  absl::StatusOr<BlockRef> ref = (*pool)->Allocate(4 << 20);
  REQUIRE(ref.ok());
  absl::Span<char> span = *(*pool)->Resolve(*ref);
  CHECK(reinterpret_cast<uintptr_t>(span.data()) % (2 << 20) == 0);
  Fill(span, getpid(), 1);
  absl::StatusOr<std::unique_ptr<ShmPool>> other = ShmPool::Attach((*pool)->path());
  REQUIRE(other.ok());
  CHECK(Holds(*(*other)->Resolve(*ref), getpid(), 1));
}

TEST_CASE("eight processes allocating at once never share a block and leak nothing") {
  NoLeftovers check;
  constexpr int kChildren = 8;
  constexpr int kSteps = 10000;
  std::unique_ptr<ShmPool> pool = MustCreate(16 << 20);
  const std::string path = pool->path();
  std::vector<pid_t> children;
  for (int c = 0; c < kChildren; ++c) {
    children.push_back(ForkChild([&path, c]() -> int {
      absl::StatusOr<std::unique_ptr<ShmPool>> mine = ShmPool::Attach(path);
      if (!mine.ok()) return 2;
      ShmPool& shared = **mine;
      const pid_t self = getpid();
      std::mt19937_64 random(1000 + c);
      struct Held {
        BlockRef ref;
        uint64_t serial;
      };
      std::vector<Held> held;
      auto release = [&](size_t i) -> int {
        absl::StatusOr<absl::Span<char>> span = shared.Resolve(held[i].ref);
        if (!span.ok()) return 4;
        if (!Holds(*span, self, held[i].serial)) {
          fprintf(stderr, "child %d: block at %lu was overwritten: given twice\n", self,
                  static_cast<unsigned long>(held[i].ref.offset));
          return 5;
        }
        if (!shared.Free(held[i].ref).ok()) return 6;
        if (shared.Resolve(held[i].ref).ok()) return 7;  // stale refs stay refused
        held.erase(held.begin() + static_cast<long>(i));
        return 0;
      };
      for (uint64_t step = 0; step < kSteps; ++step) {
        if (held.size() < 12 && (held.empty() || random() % 2 == 0)) {
          const uint64_t size = 1 + random() % (random() % 16 == 0 ? (256 << 10) : (16 << 10));
          absl::StatusOr<BlockRef> ref = shared.Allocate(size, absl::Seconds(2));
          if (!ref.ok()) {
            if (ref.status().code() == absl::StatusCode::kResourceExhausted) continue;
            fprintf(stderr, "child %d: %s\n", self, ref.status().ToString().c_str());
            return 3;
          }
          absl::StatusOr<absl::Span<char>> span = shared.Resolve(*ref);
          if (!span.ok() || span->size() != size) return 4;
          Fill(*span, self, step);
          held.push_back({*ref, step});
        } else if (int failed = release(random() % held.size()); failed != 0) {
          return failed;
        }
      }
      while (!held.empty()) {
        if (int failed = release(held.size() - 1); failed != 0) return failed;
      }
      return 0;
    }));
  }
  for (pid_t child : children) ExpectExit0(child);
  ExpectWhole(*pool);
  CHECK(pool->Stats()->repairs == 0);
}

TEST_CASE("a full pool makes Allocate wait for a free, then fail naming --shm-pool-mb") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  absl::StatusOr<BlockRef> whole = pool->Allocate(1 << 20);
  REQUIRE(whole.ok());
  Pipe result;
  const std::string path = pool->path();
  const pid_t child = ForkChild([&]() -> int {
    absl::StatusOr<std::unique_ptr<ShmPool>> mine = ShmPool::Attach(path);
    if (!mine.ok()) return 2;
    absl::StatusOr<BlockRef> ref = (*mine)->Allocate(64 << 10, absl::Seconds(5));
    const char outcome = ref.ok() ? 'y' : 'n';
    if (write(result.fds[1], &outcome, 1) != 1) return 3;
    return ref.ok() && (*mine)->Free(*ref).ok() ? 0 : 4;
  });
  // The child is inside Allocate, asleep, once the pool counts it as a waiter.
  for (int polls = 0; pool->Stats()->waiters == 0; ++polls) {
    REQUIRE(polls < 10000);
    usleep(1000);
  }
  CHECK(pool->Stats()->waiters == 1);
  REQUIRE(pool->Free(*whole).ok());
  CHECK(Receive(result.fds[0], 1) == "y");
  ExpectExit0(child);

  whole = pool->Allocate(1 << 20);
  REQUIRE(whole.ok());
  const absl::Time start = absl::Now();
  absl::Status status = pool->Allocate(64 << 10, absl::Milliseconds(50)).status();
  const absl::Duration took = absl::Now() - start;
  CHECK(took >= absl::Milliseconds(50));
  CHECK(took < absl::Seconds(2));
  CHECK(status.code() == absl::StatusCode::kResourceExhausted);
  const std::string message(status.message());
  INFO(message);
  CHECK(absl::StrContains(message, "--shm-pool-mb"));
  CHECK(absl::StrContains(message, "65536 bytes"));
  CHECK(absl::StrContains(message, "1048576 bytes"));
  CHECK(absl::StrContains(message, " 0 bytes free"));
  REQUIRE(pool->Free(*whole).ok());
  ExpectWhole(*pool);
}

TEST_CASE("a waiter killed in its wait is not counted, and frees still wake the others") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  absl::StatusOr<BlockRef> whole = pool->Allocate(1 << 20);
  REQUIRE(whole.ok());
  const std::string path = pool->path();
  auto waiter = [&path]() -> int {
    absl::StatusOr<std::unique_ptr<ShmPool>> mine = ShmPool::Attach(path);
    if (!mine.ok()) return 2;
    absl::StatusOr<BlockRef> ref = (*mine)->Allocate(4 << 10, absl::Seconds(20));
    return ref.ok() && (*mine)->Free(*ref).ok() ? 0 : 3;
  };
  const pid_t doomed = ForkChild(waiter);
  for (int polls = 0; pool->Stats()->waiters == 0; ++polls) {
    REQUIRE(polls < 10000);
    usleep(1000);
  }
  KillChild(doomed);
  CHECK(pool->Stats()->waiters == 1);  // the pool cannot know until told
  REQUIRE(pool->ReclaimOwner(doomed).ok());
  CHECK(pool->Stats()->waiters == 0);

  const pid_t survivor = ForkChild(waiter);
  for (int polls = 0; pool->Stats()->waiters == 0; ++polls) {
    REQUIRE(polls < 10000);
    usleep(1000);
  }
  const absl::Time freed_at = absl::Now();
  REQUIRE(pool->Free(*whole).ok());
  ExpectExit0(survivor);
  CHECK(absl::Now() - freed_at < absl::Seconds(5));
  ExpectWhole(*pool);
}

TEST_CASE("a process killed holding the pool's lock: the next locker repairs and goes on") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  absl::StatusOr<BlockRef> first = pool->Allocate(4 << 10);
  absl::StatusOr<BlockRef> second = pool->Allocate(100 << 10);
  REQUIRE((first.ok() && second.ok()));
  Pipe locked;
  const std::string path = pool->path();
  const pid_t child = ForkChild([&]() -> int {
    absl::StatusOr<std::unique_ptr<ShmPool>> mine = ShmPool::Attach(path);
    if (!mine.ok() || !ShmPoolTestPeer::Lock(**mine).ok()) return 2;
    if (write(locked.fds[1], "L", 1) != 1) return 3;
    pause();
    return 4;
  });
  REQUIRE(Receive(locked.fds[0], 1) == "L");
  KillChild(child);
  absl::StatusOr<BlockRef> third = pool->Allocate(8 << 10);
  REQUIRE(third.ok());
  CHECK(pool->Stats()->repairs == 1);
  CHECK(pool->Resolve(*second).ok());
  for (const BlockRef& ref : {*first, *second, *third}) REQUIRE(pool->Free(ref).ok());
  ExpectWhole(*pool);
}

TEST_CASE("processes killed at random points inside Allocate and Free leave a repairable pool") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  const std::string path = pool->path();
  std::mt19937 random(7);
  for (int round = 0; round < 100; ++round) {
    Pipe ready;
    const pid_t child = ForkChild([&]() -> int {
      absl::StatusOr<std::unique_ptr<ShmPool>> mine = ShmPool::Attach(path);
      if (!mine.ok()) return 2;
      if (write(ready.fds[1], "R", 1) != 1) return 3;
      std::vector<BlockRef> held;
      std::mt19937 steps(round);
      for (;;) {
        if (held.size() < 8 && (held.empty() || steps() % 2 == 0)) {
          absl::StatusOr<BlockRef> ref = (*mine)->Allocate(1 + steps() % (64 << 10));
          if (ref.ok()) held.push_back(*ref);
        } else {
          const size_t i = steps() % held.size();
          if (!(*mine)->Free(held[i]).ok()) return 4;
          held.erase(held.begin() + static_cast<long>(i));
        }
      }
    });
    REQUIRE(Receive(ready.fds[0], 1) == "R");
    usleep(random() % 3000);  // where the kill lands, not synchronization
    KillChild(child);
    REQUIRE(pool->ReclaimOwner(child).ok());
    ExpectWhole(*pool);
  }
  // Most kills land while the child holds the lock (it spends most of its
  // loop there), so the repair did run.
  CHECK(pool->Stats()->repairs > 0);
}

TEST_CASE("ReclaimOwner frees a killed process's blocks but not those it handed on") {
  NoLeftovers check;
  std::unique_ptr<ShmPool> pool = MustCreate(1 << 20);
  Pipe refs;
  const std::string path = pool->path();
  const pid_t parent = getpid();
  const pid_t child = ForkChild([&]() -> int {
    absl::StatusOr<std::unique_ptr<ShmPool>> mine = ShmPool::Attach(path);
    if (!mine.ok()) return 2;
    absl::StatusOr<BlockRef> scratch = (*mine)->Allocate(10 << 10);
    absl::StatusOr<BlockRef> result = (*mine)->Allocate(20 << 10);
    absl::StatusOr<BlockRef> more = (*mine)->Allocate(3 << 10);
    if (!scratch.ok() || !result.ok() || !more.ok()) return 3;
    memcpy((*mine)->Resolve(*result)->data(), "result", 6);
    if (!(*mine)->SetOwner(*result, parent).ok()) return 4;
    if (write(refs.fds[1], result->Encode().data(), BlockRef::kEncodedSize) != 24) return 5;
    pause();
    return 6;
  });
  absl::StatusOr<BlockRef> result = BlockRef::Decode(Receive(refs.fds[0], BlockRef::kEncodedSize));
  REQUIRE(result.ok());
  KillChild(child);
  absl::StatusOr<uint64_t> freed = pool->ReclaimOwner(child);
  REQUIRE(freed.ok());
  CHECK(*freed == (16 << 10) + (4 << 10));
  CHECK(*pool->ReclaimOwner(child) == 0);
  absl::StatusOr<absl::Span<char>> span = pool->Resolve(*result);
  REQUIRE(span.ok());
  CHECK(std::string(span->data(), 6) == "result");
  REQUIRE(pool->Free(*result).ok());
  ExpectWhole(*pool);
}

TEST_CASE("RemoveStale removes the pool of a dead creator and leaves live pools and other files") {
  NoLeftovers check;
  const std::string prefix = Prefix() + "stale-";
  Pipe created;
  const pid_t child = ForkChild([&]() -> int {
    ShmPoolOptions options;
    options.name = prefix + "dead";
    options.size_bytes = 1 << 20;
    absl::StatusOr<std::unique_ptr<ShmPool>> pool = ShmPool::Create(options);
    if (!pool.ok() || write(created.fds[1], "C", 1) != 1) return 2;
    _exit(0);  // as a crash would: no destructor, the file stays
  });
  REQUIRE(Receive(created.fds[0], 1) == "C");
  ExpectExit0(child);
  const std::string dead = absl::StrCat(kShm, "/", prefix, "dead");
  CHECK(Exists(dead));
  std::unique_ptr<ShmPool> live = MustCreate(1 << 20, prefix + "live");
  const std::string junk = absl::StrCat(kShm, "/", prefix, "junk");
  std::ofstream(junk) << std::string(8192, 'j');

  CHECK(ShmPool::RemoveStale(kShm, prefix) == 1);
  CHECK_FALSE(Exists(dead));
  CHECK(Exists(live->path()));
  CHECK(Exists(junk));
  CHECK(ShmPool::RemoveStale(kShm, prefix) == 0);
  unlink(junk.c_str());
}

}  // namespace
}  // namespace dragon::common::shm_pool_test
