// What the shared-memory pool tests share: unique names in /dev/shm and the
// check that nothing is left there, children with a watchdog, pipes, a block
// pattern, and the test-only way into the pool (ShmPoolTestPeer).
#ifndef DRAGON_COMMON_SHM_POOL_TEST_UTIL_H_
#define DRAGON_COMMON_SHM_POOL_TEST_UTIL_H_

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/shm_pool.h"

namespace dragon::common {

// The test-only way in: the pool's lock and the allocator's checker.
class ShmPoolTestPeer {
 public:
  static absl::Status Lock(ShmPool& pool) { return pool.Lock(); }
  static absl::Status Verify(ShmPool& pool) {
    if (absl::Status locked = pool.Lock(); !locked.ok()) return locked;
    absl::Status verified = pool.allocator_.Verify();
    pool.Unlock();
    return verified;
  }
};

namespace shm_pool_test {

constexpr char kShm[] = "/dev/shm";
constexpr unsigned kChildAlarmSeconds = 30;

// Every file these tests make in /dev/shm starts with this: the pid alone is
// not unique (Bazel's sandboxes give each run its own pid namespace, and
// several runs share /dev/shm).
inline const std::string& Prefix() {
  static const std::string prefix =
      absl::StrCat("dragon-pool-test-", getpid(), "-", std::random_device()(), "-");
  return prefix;
}

inline std::string UniqueName() {
  static int counter = 0;
  return absl::StrCat(Prefix(), counter++);
}

inline std::vector<std::string> Leftovers() {
  std::vector<std::string> names;
  DIR* dir = opendir(kShm);
  REQUIRE(dir != nullptr);
  while (dirent* entry = readdir(dir)) {
    if (absl::StartsWith(entry->d_name, Prefix())) names.push_back(entry->d_name);
  }
  closedir(dir);
  return names;
}

// Checks at the end of a test that it left nothing in /dev/shm (and removes
// what it left, so that one failure does not fail the tests after it).
struct NoLeftovers {
  ~NoLeftovers() {
    std::vector<std::string> names = Leftovers();
    CHECK(names.empty());
    for (const std::string& name : names) unlink(absl::StrCat(kShm, "/", name).c_str());
  }
};

inline std::unique_ptr<ShmPool> MustCreate(uint64_t size_bytes, std::string name = UniqueName()) {
  ShmPoolOptions options;
  options.name = std::move(name);
  options.size_bytes = size_bytes;
  absl::StatusOr<std::unique_ptr<ShmPool>> pool = ShmPool::Create(options);
  INFO(pool.status().ToString());
  REQUIRE(pool.ok());
  return std::move(*pool);
}

inline bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// Runs `body` in a child that _exits with its result; a child that hangs is
// killed by its alarm.
inline pid_t ForkChild(const std::function<int()>& body) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    alarm(kChildAlarmSeconds);
    _exit(body());
  }
  return pid;
}

// The child's wait status; a child still running after `limit` is killed and
// fails the test (a deadlock shows as this message instead of a hang).
inline int WaitChild(pid_t pid, int limit_seconds = kChildAlarmSeconds + 5) {
  int status = 0;
  for (int waited_ms = 0;; ++waited_ms) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    REQUIRE(done >= 0);
    if (done == pid) return status;
    if (waited_ms >= limit_seconds * 1000) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL("child " << pid << " still running after " << limit_seconds << " s: deadlock?");
    }
    usleep(1000);
  }
}

inline void ExpectExit0(pid_t pid) {
  const int status = WaitChild(pid);
  INFO("child " << pid << " wait status " << status);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

inline void KillChild(pid_t pid) {
  kill(pid, SIGKILL);
  const int status = WaitChild(pid);
  CHECK(WIFSIGNALED(status));
}


inline std::string Receive(int fd, size_t size) {
  std::string bytes(size, '\0');
  size_t got = 0;
  while (got < size) {
    const ssize_t n = read(fd, &bytes[got], size - got);
    REQUIRE(n > 0);
    got += static_cast<size_t>(n);
  }
  return bytes;
}

struct Pipe {
  Pipe() { REQUIRE(pipe(fds) == 0); }
  ~Pipe() {
    close(fds[0]);
    close(fds[1]);
  }
  int fds[2];
};

// A pattern no other block or use of the same block has.
inline uint8_t PatternByte(pid_t pid, uint64_t serial, uint64_t at) {
  return static_cast<uint8_t>((pid * 131) ^ (serial * 29) ^ at ^ (at >> 8));
}
inline void Fill(absl::Span<char> span, pid_t pid, uint64_t serial) {
  for (uint64_t at = 0; at < span.size(); ++at) {
    span[at] = static_cast<char>(PatternByte(pid, serial, at));
  }
}
inline bool Holds(absl::Span<char> span, pid_t pid, uint64_t serial) {
  for (uint64_t at = 0; at < span.size(); ++at) {
    if (static_cast<uint8_t>(span[at]) != PatternByte(pid, serial, at)) return false;
  }
  return true;
}

inline void ExpectWhole(ShmPool& pool) {
  absl::StatusOr<ShmPoolStats> stats = pool.Stats();
  REQUIRE(stats.ok());
  CHECK(stats->free_bytes == stats->capacity_bytes);
  CHECK(stats->largest_free_block == stats->largest_possible_block);
  CHECK(stats->blocks_in_use == 0);
  CHECK(stats->waiters == 0);
  CHECK(ShmPoolTestPeer::Verify(pool).ok());
}

}  // namespace shm_pool_test
}  // namespace dragon::common

#endif  // DRAGON_COMMON_SHM_POOL_TEST_UTIL_H_
