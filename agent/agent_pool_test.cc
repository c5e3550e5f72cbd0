#include "agent/agent_pool.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/shm_pool.h"
#include "common/test_dir.h"

namespace dragon::agent {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// A private directory under /dev/shm, removed with everything in it.
struct ShmDir : common::TestDir {
  ShmDir() : TestDir("/dev/shm/dragon-agent-pool-test-") {}
};

TEST_CASE("the default pool is 1/8 of the memory, at most half of the file system, in MiB") {
  CHECK(DefaultPoolBytes(64 * kGiB, 32 * kGiB) == 8 * kGiB);
  CHECK(DefaultPoolBytes(64 * kGiB, 8 * kGiB) == 4 * kGiB);
  CHECK(DefaultPoolBytes(8 * (3 * kMiB + 5), 100 * kGiB) == 3 * kMiB);
  CHECK(DefaultPoolBytes(64 * kGiB, kMiB) == 0);
}

TEST_CASE("--shm-pool-mb: auto, 0, a size, and bad values naming the flag") {
  const uint64_t mem = 16 * kGiB, fs = 4 * kGiB;
  CHECK(*PoolBytesFromFlag("auto", mem, fs, "/dev/shm") == 2 * kGiB);
  CHECK(*PoolBytesFromFlag("", mem, fs, "/dev/shm") == 2 * kGiB);
  CHECK(*PoolBytesFromFlag("0", mem, fs, "/dev/shm") == 0);
  CHECK(*PoolBytesFromFlag("512", mem, fs, "/dev/shm") == 512 * kMiB);
  CHECK(*PoolBytesFromFlag("4096", mem, fs, "/dev/shm") == 4 * kGiB);

  absl::StatusOr<uint64_t> negative = PoolBytesFromFlag("-1", mem, fs, "/dev/shm");
  REQUIRE(!negative.ok());
  CHECK(absl::StrContains(negative.status().message(), "--shm-pool-mb -1 is negative"));
  for (const char* text : {"abc", "1.5", "12MB"}) {
    absl::StatusOr<uint64_t> bad = PoolBytesFromFlag(text, mem, fs, "/dev/shm");
    REQUIRE(!bad.ok());
    CHECK(absl::StrContains(bad.status().message(),
                            absl::StrCat("--shm-pool-mb must be a whole number of MiB")));
    CHECK(absl::StrContains(bad.status().message(), text));
  }
  absl::StatusOr<uint64_t> large = PoolBytesFromFlag("4097", mem, fs, "/x");
  REQUIRE(!large.ok());
  CHECK(large.status().message() ==
        "--shm-pool-mb 4097 is larger than the file system of --shm-dir /x (4096 MiB)");

  // No usable --shm-dir: its error, unless no pool is wanted.
  const absl::Status no_dir = absl::InvalidArgumentError("--shm-dir /x: No such file or directory");
  CHECK(*PoolBytesFromFlag("0", mem, no_dir, "/x") == 0);
  CHECK(PoolBytesFromFlag("8", mem, no_dir, "/x").status() == no_dir);
  CHECK(PoolBytesFromFlag("auto", mem, no_dir, "/x").status() == no_dir);
  CHECK(!PoolBytesFromFlag("-3", mem, no_dir, "/x").ok());
}

TEST_CASE("pool file names: uid, node id without '/', pid") {
  CHECK(PoolFileName(1000, "n1", 42) == "dragon-pool-1000-n1-42");
  CHECK(PoolFileName(0, "a/b c.d_e-f", 7) == "dragon-pool-0-a_b_c.d_e-f-7");
}

TEST_CASE("the machine's memory and a file system's size are read") {
  CHECK(*MemTotalBytes() > 0);
  CHECK(*FileSystemBytes("/dev/shm") > 0);
  absl::StatusOr<uint64_t> missing = FileSystemBytes("/no/such/dir");
  REQUIRE(!missing.ok());
  CHECK(absl::StrContains(missing.status().message(), "--shm-dir /no/such/dir"));
}

TEST_CASE("ProcessExists: this process yes, a reaped child no") {
  CHECK(ProcessExists(getpid()));
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) _exit(0);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK_FALSE(ProcessExists(child));
}

TEST_CASE("the janitor reclaims dead owners' blocks once a second, leaves live ones") {
  ShmDir dir;
  common::FakeClock clock;
  std::set<pid_t> dead = {1000001};
  AgentPoolOptions options;
  options.dir = dir.path;
  options.node_id = "n1";
  options.size_bytes = 16 * kMiB;
  options.clock = &clock;
  options.alive = [&dead](pid_t pid) { return dead.count(pid) == 0; };
  options.janitor_thread = false;
  absl::StatusOr<std::unique_ptr<AgentPool>> started = AgentPool::Start(options);
  INFO(started.status().ToString());
  REQUIRE(started.ok());
  AgentPool& pool = **started;
  CHECK(pool.path() == absl::StrCat(dir.path, "/", PoolFileName(geteuid(), "n1", getpid())));
  CHECK(pool.capacity_bytes() == 16 * kMiB);
  CHECK(pool.usage().free_bytes == 16 * kMiB);
  CHECK(pool.usage().blocks == 0);

  for (pid_t owner : {pid_t{1000001}, pid_t{1000001}, pid_t{1000002}, getpid()}) {
    REQUIRE(pool.pool()->Allocate(64 * 1024, absl::ZeroDuration(), owner).ok());
  }
  PoolJanitor& janitor = *pool.janitor();
  // The first tick sweeps: the dead owner's two blocks go, the live one's and ours stay.
  CHECK(janitor.Tick() == 2 * 64 * 1024);
  CHECK(pool.usage().blocks == 2);
  CHECK(pool.usage().free_bytes == 16 * kMiB - 2 * 64 * 1024);
  CHECK(*pool.pool()->Owners() == std::vector<pid_t>{std::min(getpid(), pid_t{1000002}),
                                                     std::max(getpid(), pid_t{1000002})});

  // The second owner dies; nothing happens until a second has passed.
  dead.insert(1000002);
  dead.insert(getpid());  // never our own blocks
  CHECK(janitor.Tick() == 0);
  clock.Advance(absl::Milliseconds(999));
  CHECK(janitor.Tick() == 0);
  CHECK(pool.usage().blocks == 2);
  clock.Advance(absl::Milliseconds(1));
  CHECK(janitor.Tick() == 64 * 1024);
  CHECK(pool.usage().blocks == 1);
  CHECK(*pool.pool()->Owners() == std::vector<pid_t>{getpid()});
  CHECK(janitor.reclaimed_bytes() == 3 * 64 * 1024);

  // A worker the agent saw exit: at once, without waiting for the tick.
  REQUIRE(pool.pool()->Allocate(4096, absl::ZeroDuration(), 1000003).ok());
  CHECK(janitor.ReclaimDead(1000003) == 4096);
}

TEST_CASE("start removes pools of dead agents; the pool's file goes with the AgentPool") {
  ShmDir dir;
  // A crashed agent: creates its pool and dies without running destructors.
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    common::ShmPoolOptions popts;
    popts.dir = dir.path;
    popts.name = PoolFileName(geteuid(), "crashed", getpid());
    popts.size_bytes = kMiB;
    popts.reserve = false;
    absl::StatusOr<std::unique_ptr<common::ShmPool>> pool = common::ShmPool::Create(popts);
    _exit(pool.ok() ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(dir.Files() == 1);

  AgentPoolOptions options;
  options.dir = dir.path;
  options.node_id = "n2";
  options.size_bytes = 4 * kMiB;
  options.janitor_period = absl::Milliseconds(10);
  std::string path;
  {
    absl::StatusOr<std::unique_ptr<AgentPool>> started = AgentPool::Start(options);
    REQUIRE(started.ok());
    path = (*started)->path();
    CHECK(dir.Files() == 1);  // only ours
    CHECK(access(path.c_str(), F_OK) == 0);
  }
  CHECK(access(path.c_str(), F_OK) != 0);
  CHECK(dir.Files() == 0);
}

// A crashed agent of `node`: creates its pool, allocates a block for this
// process holding `text`, and dies without running destructors.
std::pair<std::string, common::BlockRef> CrashedAgentPool(const ShmDir& dir, const std::string& node,
                                                          uint64_t size_bytes, const char* text) {
  const pid_t parent = getpid();
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    common::ShmPoolOptions popts;
    popts.dir = dir.path;
    popts.name = PoolFileName(geteuid(), node, getpid());
    popts.size_bytes = size_bytes;
    popts.reserve = false;
    absl::StatusOr<std::unique_ptr<common::ShmPool>> pool = common::ShmPool::Create(popts);
    if (!pool.ok()) _exit(1);
    absl::StatusOr<common::BlockRef> ref = (*pool)->Allocate(4096, absl::ZeroDuration(), parent);
    if (!ref.ok()) _exit(2);
    memcpy((*pool)->Resolve(*ref)->data(), text, strlen(text));
    const std::string line = absl::StrCat((*pool)->path(), "\n", ref->Encode());
    if (write(fds[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(3);
    _exit(0);
  }
  close(fds[1]);
  std::string got;
  char buf[512];
  for (ssize_t n; (n = read(fds[0], buf, sizeof(buf))) > 0;) got.append(buf, n);
  close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  const size_t newline = got.find('\n');
  REQUIRE(newline != std::string::npos);
  absl::StatusOr<common::BlockRef> ref = common::BlockRef::Decode(got.substr(newline + 1));
  REQUIRE(ref.ok());
  return {got.substr(0, newline), *ref};
}

TEST_CASE("an agent started again adopts its node's dead pool: live owners' blocks are kept") {
  ShmDir dir;
  auto [mine, ref] = CrashedAgentPool(dir, "n1", 4 * kMiB, "task arguments");
  auto [other, unused] = CrashedAgentPool(dir, "n1-b2", 4 * kMiB, "x");  // not n1's
  CHECK(PredecessorPools(dir.path, geteuid(), "n1") == std::vector<std::string>{mine});

  AgentPoolOptions options;
  options.dir = dir.path;
  options.node_id = "n1";
  options.size_bytes = 4 * kMiB;
  options.janitor_thread = false;
  {
    absl::StatusOr<std::unique_ptr<AgentPool>> started = AgentPool::Start(options);
    REQUIRE(started.ok());
    CHECK((*started)->path() == mine);
    CHECK(access(other.c_str(), F_OK) != 0);  // another node's dead pool: removed
    absl::StatusOr<absl::Span<char>> kept = (*started)->pool()->Resolve(ref);
    REQUIRE(kept.ok());
    CHECK(std::string(kept->data(), 14) == "task arguments");
    CHECK(dir.Files() == 1);
  }
  CHECK(dir.Files() == 0);  // the adopter removes it at exit

  // One of another size is not adopted: a new pool replaces it.
  auto [small, small_ref] = CrashedAgentPool(dir, "n1", 2 * kMiB, "y");
  absl::StatusOr<std::unique_ptr<AgentPool>> started = AgentPool::Start(options);
  REQUIRE(started.ok());
  CHECK((*started)->path() != small);
  CHECK(access(small.c_str(), F_OK) != 0);
  CHECK((*started)->capacity_bytes() == 4 * kMiB);
}

}  // namespace
}  // namespace dragon::agent
