// What the DataPlane tests share: pools in a private directory under
// /dev/shm, block patterns, a map-based PeerDirectory, two nodes in this
// process, and the pipe protocol to a node in a forked child.
#ifndef DRAGON_AGENT_DATA_PLANE_TEST_UTIL_H_
#define DRAGON_AGENT_DATA_PLANE_TEST_UTIL_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/data_plane.h"
#include "common/shm_pool.h"
#include "common/test_dir.h"

namespace dragon::agent::data_plane_test {

using common::BlockRef;
using common::ShmPool;

inline constexpr uint64_t kKiB = uint64_t{1} << 10;
inline constexpr uint64_t kMiB = uint64_t{1} << 20;
inline constexpr uint64_t kPoolBytes = 256 * kMiB;
inline const absl::Duration kCallTimeout = absl::Seconds(10);
inline constexpr unsigned kChildAlarmSeconds = 30;

inline void UseTcpOnLoopback() { setenv("UCX_TLS", "tcp,self", 1); }

// A private directory under /dev/shm for the pools of one test; the test
// checks that it is empty before it goes.
struct ShmDir : common::TestDir {
  ShmDir() : TestDir("/dev/shm/dragon-data-plane-test-") {}
};

inline std::unique_ptr<ShmPool> MakePool(const ShmDir& dir, const std::string& name,
                                  uint64_t size = kPoolBytes) {
  common::ShmPoolOptions options;
  options.dir = dir.path;
  options.name = name;
  options.size_bytes = size;
  absl::StatusOr<std::unique_ptr<ShmPool>> pool = ShmPool::Create(options);
  INFO(pool.status().ToString());
  REQUIRE(pool.ok());
  return *std::move(pool);
}

inline uint64_t BlocksInUse(ShmPool& pool) {
  absl::StatusOr<common::ShmPoolStats> stats = pool.Stats();
  REQUIRE(stats.ok());
  return stats->blocks_in_use;
}

// Bytes no other block of a test holds: `seed` tells blocks apart.
inline std::string Pattern(uint64_t size, uint8_t seed) {
  std::string bytes(size, '\0');
  for (uint64_t i = 0; i < size; ++i) {
    bytes[i] = static_cast<char>((i * 131 + seed + (i >> 12)) & 0xff);
  }
  return bytes;
}

// A block of `pool` holding Pattern(size, seed), owned by this process.
inline BlockRef WriteBlock(ShmPool& pool, uint64_t size, uint8_t seed) {
  absl::StatusOr<BlockRef> ref = pool.Allocate(size);
  INFO(ref.status().ToString());
  REQUIRE(ref.ok());
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(*ref);
  REQUIRE(span.ok());
  const std::string pattern = Pattern(size, seed);
  std::copy(pattern.begin(), pattern.end(), span->data());
  return *ref;
}

inline bool Holds(ShmPool& pool, const BlockRef& ref, uint64_t size, uint8_t seed) {
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(ref);
  if (!span.ok() || span->size() < size) return false;
  return absl::string_view(span->data(), size) == Pattern(size, seed);
}

// The directory of a test: node id -> what its data plane published.
class FakeDirectory : public PeerDirectory {
 public:
  absl::StatusOr<PeerInfo> Lookup(const std::string& node_id, bool refresh) override {
    absl::MutexLock lock(&mu_);
    refreshes_ += refresh;
    auto found = nodes_.find(node_id);
    if (found == nodes_.end()) {
      return absl::NotFoundError(absl::StrCat("no node ", node_id, " with a data plane"));
    }
    return found->second;
  }
  void Set(const PeerInfo& info) {
    absl::MutexLock lock(&mu_);
    nodes_[info.node_id] = info;
  }
  void Publish(const std::string& node_id, const DataPlane& plane) {
    Set(PeerInfo{node_id, plane.ucx_address(), plane.pool_rkey(), plane.pool_address(),
                 pool_bytes});
  }
  // The pool size Publish announces (0: none, no bounds check).
  void SetPoolBytes(uint64_t bytes) {
    absl::MutexLock lock(&mu_);
    pool_bytes = bytes;
  }
  int refreshes() {
    absl::MutexLock lock(&mu_);
    return refreshes_;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, PeerInfo> nodes_;
  int refreshes_ = 0;
  uint64_t pool_bytes = 0;
};

inline DataPlaneOptions Options(const std::string& node_id) {
  DataPlaneOptions options;
  options.node_id = node_id;
  options.ucx.name = node_id;
  options.request_threads = 2;
  options.default_timeout = kCallTimeout;
  return options;
}

inline std::unique_ptr<DataPlane> MustStart(ShmPool* pool, PeerDirectory* directory,
                                     const std::string& node_id) {
  absl::StatusOr<std::unique_ptr<DataPlane>> plane =
      DataPlane::Start(pool, directory, Options(node_id));
  INFO(plane.status().ToString());
  REQUIRE(plane.ok());
  return *std::move(plane);
}

// Two nodes in this process: h1 over pool_a, h2 over pool_b, each in the
// directory. Destroyed planes first, then pools; then nothing may be left.
struct TwoNodes {
  explicit TwoNodes(bool start = true) {
    UseTcpOnLoopback();
    if (start) StartPlanes();
  }
  void StartPlanes() {
    a = MustStart(pool_a.get(), &directory, "h1");
    b = MustStart(pool_b.get(), &directory, "h2");
    directory.Publish("h1", *a);
    directory.Publish("h2", *b);
  }
  ~TwoNodes() {
    a.reset();
    b.reset();
    pool_a.reset();
    pool_b.reset();
    CHECK(dir.Files() == 0);
  }
  ShmDir dir;
  std::unique_ptr<ShmPool> pool_a = MakePool(dir, "pool-a");
  std::unique_ptr<ShmPool> pool_b = MakePool(dir, "pool-b");
  FakeDirectory directory;
  std::unique_ptr<DataPlane> a, b;
};

// Frees `ref` of `pool` if `owner` owns it: fails the test otherwise.
inline void ExpectOwnedAndFree(ShmPool& pool, const BlockRef& ref, pid_t owner) {
  absl::StatusOr<bool> freed = pool.FreeIfOwner(ref, owner);
  REQUIRE(freed.ok());
  CHECK(*freed);
}

// --- A node in a forked child: its PeerInfo over pipes ------------------

inline void WriteAll(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

inline bool ReadAll(int fd, char* out, size_t size, absl::Time deadline) {
  size_t done = 0;
  while (done < size) {
    pollfd p{fd, POLLIN, 0};
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0 || poll(&p, 1, ms) <= 0) return false;
    const ssize_t n = read(fd, out + done, size - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

inline void WriteString(int fd, const std::string& s) {
  const uint64_t n = s.size();
  WriteAll(fd, std::string(reinterpret_cast<const char*>(&n), sizeof(n)) + s);
}

inline bool ReadString(int fd, std::string* s, absl::Time deadline) {
  uint64_t n = 0;
  if (!ReadAll(fd, reinterpret_cast<char*>(&n), sizeof(n), deadline)) return false;
  s->resize(n);
  return ReadAll(fd, s->data(), n, deadline);
}

inline void WritePeerInfo(int fd, const PeerInfo& info) {
  WriteString(fd, info.node_id);
  WriteString(fd, info.ucx_address);
  WriteString(fd, info.pool_rkey);
  WriteString(fd, std::to_string(info.pool_address));
}

inline bool ReadPeerInfo(int fd, PeerInfo* info, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string address;
  if (!ReadString(fd, &info->node_id, deadline) || !ReadString(fd, &info->ucx_address, deadline) ||
      !ReadString(fd, &info->pool_rkey, deadline) || !ReadString(fd, &address, deadline)) {
    return false;
  }
  info->pool_address = std::stoull(address);
  return true;
}

// Bounded waitpid; a child still running is killed and fails the test.
inline int WaitChild(pid_t pid, absl::Duration limit = absl::Seconds(kChildAlarmSeconds + 5)) {
  const absl::Time deadline = absl::Now() + limit;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL("child " << pid << " still running after " << absl::FormatDuration(limit));
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return status;
}

// A node whose data plane runs in a forked child (over `pool`, with
// `options`) until the test kills it: the way to lose a peer for real. The
// constructor returns once the child's plane runs; Join() gives it the
// parent's plane and waits until it knows it. Closing the pipes (the
// destructor) makes a child that was not killed exit on its own.
class ForkedNode {
 public:
  // `work`, if given, runs in `work_threads` threads of the child once it
  // knows the parent (until the child is killed): a peer busy with the
  // parent when it dies.
  ForkedNode(ShmPool* pool, const DataPlaneOptions& options,
             std::function<void(DataPlane&)> work = nullptr, int work_threads = 0)
      : work_(std::move(work)), work_threads_(work_threads) {
    int down[2], up[2];
    REQUIRE(pipe2(down, O_CLOEXEC) == 0);
    REQUIRE(pipe2(up, O_CLOEXEC) == 0);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) Serve(pool, options, down[0], up[1], work_, work_threads_);  // never returns
    close(down[0]);
    close(up[1]);
    down_ = down[1];
    up_ = up[0];
    REQUIRE(ReadPeerInfo(up_, &info_));
  }
  ~ForkedNode() {
    close(down_);
    close(up_);
    if (!reaped_) WaitChild(pid_);
  }
  ForkedNode(const ForkedNode&) = delete;
  ForkedNode& operator=(const ForkedNode&) = delete;

  // What the child's plane published.
  const PeerInfo& info() const { return info_; }
  void Join(const PeerInfo& parent) {
    WritePeerInfo(down_, parent);
    std::string ready;
    REQUIRE(ReadString(up_, &ready, absl::Now() + absl::Seconds(10)));
  }
  // SIGKILLs the child and reaps it.
  void Kill() {
    kill(pid_, SIGKILL);
    CHECK(WIFSIGNALED(WaitChild(pid_)));
    reaped_ = true;
  }

 private:
  // The child: no Catch2 here, exit codes only.
  [[noreturn]] static void Serve(ShmPool* pool, const DataPlaneOptions& options, int down, int up,
                                 const std::function<void(DataPlane&)>& work, int work_threads) {
    alarm(kChildAlarmSeconds);
    FakeDirectory directory;
    absl::StatusOr<std::unique_ptr<DataPlane>> plane = DataPlane::Start(pool, &directory, options);
    if (!plane.ok()) _exit(2);
    WritePeerInfo(up, PeerInfo{options.node_id, (*plane)->ucx_address(), (*plane)->pool_rkey(),
                               (*plane)->pool_address()});
    PeerInfo parent;
    if (!ReadPeerInfo(down, &parent)) _exit(3);
    directory.Set(parent);
    WriteString(up, "ready");
    for (int i = 0; work && i < work_threads; ++i) {
      std::thread([&work, &plane] { work(**plane); }).detach();  // ends with the child
    }
    char byte;
    while (read(down, &byte, 1) > 0) {
    }
    _exit(4);  // the parent went away without killing us
  }

  std::function<void(DataPlane&)> work_;
  int work_threads_;
  pid_t pid_ = -1;
  int down_ = -1, up_ = -1;
  PeerInfo info_;
  bool reaped_ = false;
};

// The PeerInfo `plane` publishes as node `node_id`.
inline PeerInfo InfoOf(const std::string& node_id, const DataPlane& plane) {
  return PeerInfo{node_id, plane.ucx_address(), plane.pool_rkey(), plane.pool_address()};
}

}  // namespace dragon::agent::data_plane_test

#endif  // DRAGON_AGENT_DATA_PLANE_TEST_UTIL_H_
