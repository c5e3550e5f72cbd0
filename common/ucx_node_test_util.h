// Helpers of ucx_node_test.cc: a forked child with a node of its own,
// connected to the parent's; a watchdog on both sides; /dev/shm checks.
#ifndef DRAGON_COMMON_UCX_NODE_TEST_UTIL_H_
#define DRAGON_COMMON_UCX_NODE_TEST_UTIL_H_

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/ucx_node.h"

namespace dragon::common::ucx_test {

inline constexpr int kChildAlarmSeconds = 25;
inline const absl::Duration kChildWait = absl::Seconds(28);
inline const absl::Duration kOpTimeout = absl::Seconds(10);

inline void UseTcpOnLoopback() {
  setenv("UCX_TLS", "tcp,self", 1);
}

// Entries of /dev/shm that UCX made: its posix transport's segments are
// "ucx_shm_posix_<id>". Only those are compared, because other suites'
// pools come and go in /dev/shm while this test runs.
inline std::set<std::string> UcxShmFiles() {
  std::set<std::string> names;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return names;
  while (dirent* entry = readdir(dir)) {
    if (std::strncmp(entry->d_name, "ucx", 3) == 0) names.insert(entry->d_name);
  }
  closedir(dir);
  return names;
}

// Checks at the end of a test that UCX left nothing new in /dev/shm.
struct ShmLeakCheck {
  std::set<std::string> before = UcxShmFiles();
  ~ShmLeakCheck() {
    std::set<std::string> after = UcxShmFiles();
    for (const std::string& name : after) {
      CHECK_MSG(before.count(name) == 1, "left in /dev/shm: " + name);
    }
  }
  static void CHECK_MSG(bool ok, const std::string& message) {
    INFO(message);
    CHECK(ok);
  }
};

// Length-prefixed frames on a pipe, for the worker addresses.
inline void WriteFrame(int fd, const std::string& data) {
  uint64_t n = data.size();
  std::string frame(reinterpret_cast<const char*>(&n), sizeof(n));
  frame += data;
  size_t off = 0;
  while (off < frame.size()) {
    ssize_t w = write(fd, frame.data() + off, frame.size() - off);
    if (w <= 0) return;
    off += static_cast<size_t>(w);
  }
}

inline bool ReadExactly(int fd, char* out, size_t n, absl::Time deadline) {
  size_t off = 0;
  while (off < n) {
    pollfd p{fd, POLLIN, 0};
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0 || poll(&p, 1, ms) <= 0) return false;
    ssize_t r = read(fd, out + off, n - off);
    if (r <= 0) return false;
    off += static_cast<size_t>(r);
  }
  return true;
}

inline bool ReadFrame(int fd, std::string* data, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  uint64_t n = 0;
  if (!ReadExactly(fd, reinterpret_cast<char*>(&n), sizeof(n), deadline)) return false;
  data->resize(n);
  return ReadExactly(fd, data->data(), n, deadline);
}

// The child's side of a test: fails with a message on stderr and exit 1.
[[noreturn]] inline void ChildFail(const std::string& what) {
  fprintf(stderr, "child: %s\n", what.c_str());
  _exit(1);
}
inline void ChildCheck(bool ok, const std::string& what) {
  if (!ok) ChildFail(what);
}
template <typename T>
inline T ChildValue(absl::StatusOr<T> value, const std::string& what) {
  if (!value.ok()) ChildFail(what + ": " + value.status().ToString());
  return *std::move(value);
}
inline void ChildOk(const absl::Status& status, const std::string& what) {
  if (!status.ok()) ChildFail(what + ": " + status.ToString());
}

// A forked process with a node of its own, connected to the parent's node.
struct Child {
  pid_t pid = -1;
  int to_child = -1;
  int from_child = -1;
};

// Forks; the child makes a node, swaps addresses with the parent over
// pipes, connects to it as "parent", runs `body` and exits 0.
inline Child StartChild(const std::function<void(UcxNode&, UcxPeer)>& body) {
  int down[2], up[2];
  REQUIRE(pipe2(down, O_CLOEXEC) == 0);
  REQUIRE(pipe2(up, O_CLOEXEC) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    alarm(kChildAlarmSeconds);  // watchdog: a hang ends in SIGALRM
    close(down[1]);
    close(up[0]);
    UcxNodeOptions options;
    options.name = "child";
    std::unique_ptr<UcxNode> node = ChildValue(UcxNode::Create(options), "Create");
    WriteFrame(up[1], node->address());
    std::string parent_address;
    ChildCheck(ReadFrame(down[0], &parent_address), "no address from the parent");
    UcxPeer parent = ChildValue(node->Connect(parent_address, "parent"), "Connect");
    body(*node, parent);
    node.reset();
    _exit(0);
  }
  close(down[0]);
  close(up[1]);
  return Child{pid, down[1], up[0]};
}

// The parent's side: its node connected to the child as "child".
inline UcxPeer ConnectToChild(UcxNode& node, const Child& child) {
  std::string child_address;
  REQUIRE(ReadFrame(child.from_child, &child_address));
  WriteFrame(child.to_child, node.address());
  absl::StatusOr<UcxPeer> peer = node.Connect(child_address, "child");
  REQUIRE(peer.ok());
  return *peer;
}

// Bounded waitpid: a child still running after `timeout` is killed and the
// test fails saying so. Returns the wait status.
inline int WaitChild(Child& child, absl::Duration timeout = kChildWait) {
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  for (;;) {
    pid_t r = waitpid(child.pid, &status, WNOHANG);
    if (r == child.pid) break;
    if (absl::Now() > deadline) {
      kill(child.pid, SIGKILL);
      waitpid(child.pid, &status, 0);
      FAIL("child did not finish within " << absl::FormatDuration(timeout) << "; killed");
    }
    usleep(10 * 1000);
  }
  close(child.to_child);
  close(child.from_child);
  child.pid = -1;
  return status;
}

inline void ExpectChildSucceeded(Child& child) {
  int status = WaitChild(child);
  INFO("child wait status " << status);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

inline std::string Pattern(size_t size, uint8_t seed) {
  std::string data(size, '\0');
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>((i * 131 + seed + (i >> 12)) & 0xff);
  return data;
}

inline std::unique_ptr<UcxNode> MakeNode(const std::string& name) {
  UcxNodeOptions options;
  options.name = name;
  absl::StatusOr<std::unique_ptr<UcxNode>> node = UcxNode::Create(options);
  INFO(node.status().ToString());
  REQUIRE(node.ok());
  return *std::move(node);
}

inline std::string Sequence(uint32_t i) { return std::string(reinterpret_cast<const char*>(&i), 4); }

// Kills the child `delay` after it is called, on a thread, and records when.
struct DelayedKill {
  std::atomic<int64_t> killed_at_us{0};
  std::thread thread;
  DelayedKill(pid_t pid, absl::Duration delay)
      : thread([this, pid, delay] {
          absl::SleepFor(delay);
          // Before the kill: the victim's peer may notice before kill returns.
          killed_at_us = absl::ToUnixMicros(absl::Now());
          kill(pid, SIGKILL);
        }) {}
  ~DelayedKill() { thread.join(); }
  absl::Duration SinceKill() const {
    return absl::Now() - absl::FromUnixMicros(killed_at_us.load());
  }
};

}  // namespace dragon::common::ucx_test

#endif  // DRAGON_COMMON_UCX_NODE_TEST_UTIL_H_
