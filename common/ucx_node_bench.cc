// ucx_node_bench: UcxNode between two processes on this host (the parent
// measures, a forked child serves), next to ucx_perftest over the same
// transports. Prints one JSON line.
//
//   bazel run //common:ucx_node_bench -- [--tls=tcp,self] [--iters=1000]
//       [--size=1048576] [--lat_iters=10000] [--perftest]
//
// Between two hosts (issue 14: "between two test hosts next to ucx_perftest
// over the same link"): run it on one host with `--peer_cmd` the prefix that
// runs a command on the other, e.g. on the netns test bed
//   ip netns exec tb-h2 env UCX_NET_DEVICES=tb0 ucx_node_bench
//       --peer_cmd="ip netns exec tb-h1" --perftest --perftest_host=10.201.0.1
// (one command line)
// The serving side is then this binary again (`--serve`, started through the
// prefix instead of forked), and the two exchange their UCX addresses over
// two pipes it inherits as fds 3 and 4 (a pipe crosses network namespaces;
// its stdout might carry UCX's log lines). ucx_perftest's server is started
// through the same prefix and its client connects to --perftest_host.
//
// Measured (MB/s as ucx_perftest counts them, 2^20 bytes per MB):
//  - send_mbps: `iters` Sends of `size` bytes, the child receiving each into
//    one buffer (ReceiveInto) and acknowledging the last; like tag_bw.
//  - get_mbps: `iters` Gets of `size` bytes from a region the child
//    registered.
//  - rtt_us_p50: round trips of 8 bytes (Send, then ReceiveInto the echo).
// With --perftest, also runs `ucx_perftest -t tag_bw -s <size> -n <iters>`,
// `-t ucp_get` the same, and `-t tag_lat -s 8 -n <lat_iters>` on 127.0.0.1
// with the same UCX_TLS, and adds their numbers and our ratios to them
// (Send and Get against tag_bw, the goal of issue 14; Get also against
// ucp_get). tag_lat reports half a
// round trip; it is doubled here to compare round trips.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <thread>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/perftest_runner.h"
#include "common/ucx_node.h"

ABSL_FLAG(std::string, tls, "tcp,self", "UCX_TLS for both processes (and ucx_perftest)");
ABSL_FLAG(int, iters, 1000, "messages and Gets for the bandwidths");
ABSL_FLAG(int, size, 1 << 20, "bytes per message and per Get");
ABSL_FLAG(int, lat_iters, 10000, "round trips for the latency");
ABSL_FLAG(bool, perftest, false, "also run ucx_perftest tag_bw and tag_lat on loopback");
ABSL_FLAG(int, perftest_port, 13517, "ucx_perftest's port");
ABSL_FLAG(int, threads, 4, "callers at once in the concurrent Send and Get runs");
ABSL_FLAG(int, busy_poll_us, -1,
          "UcxNodeOptions::busy_poll, in microseconds (-1: UcxNodeOptions' default, what the "
          "agents use)");
ABSL_FLAG(std::string, peer_cmd, "",
          "space-separated prefix that runs the serving side (and ucx_perftest's server) on "
          "another host, e.g. 'ip netns exec tb-h1'; empty: a forked child on this host");
ABSL_FLAG(std::string, perftest_host, "127.0.0.1",
          "where ucx_perftest's client connects (the serving host's address with --peer_cmd)");
ABSL_FLAG(bool, serve, false,
          "internal: be the serving side started through --peer_cmd (the peer's address on "
          "fd 3, ours written to fd 4)");

extern char** environ;

namespace dragon::common {
namespace {

constexpr uint64_t kData = 1, kAck = 2, kPing = 3, kPong = 4, kRkey = 5, kDone = 6, kData2 = 7;
const absl::Duration kTimeout = absl::Seconds(30);

[[noreturn]] void Die(const std::string& what) {
  fprintf(stderr, "ucx_node_bench: %s\n", what.c_str());
  exit(1);
}
void Check(const absl::Status& status, const std::string& what) {
  if (!status.ok()) Die(what + ": " + status.ToString());
}
template <typename T>
T Value(absl::StatusOr<T> v, const std::string& what) {
  Check(v.status(), what);
  return *std::move(v);
}

void WriteAll(int fd, const std::string& data) {
  uint64_t n = data.size();
  std::string frame(reinterpret_cast<const char*>(&n), sizeof(n));
  frame += data;
  for (size_t off = 0; off < frame.size();) {
    ssize_t w = write(fd, frame.data() + off, frame.size() - off);
    if (w <= 0) Die("pipe write");
    off += static_cast<size_t>(w);
  }
}
std::string ReadFrame(int fd) {
  auto read_exactly = [fd](char* out, size_t n) {
    for (size_t off = 0; off < n;) {
      ssize_t r = read(fd, out + off, n - off);
      if (r <= 0) Die("pipe read");
      off += static_cast<size_t>(r);
    }
  };
  uint64_t n;
  read_exactly(reinterpret_cast<char*>(&n), sizeof(n));
  std::string data(n, '\0');
  read_exactly(data.data(), n);
  return data;
}

// The child: receives, echoes, and serves Gets from a registered region.
// Runs `body(i)` on `n` threads at once and joins them.
template <typename Body>
void RunThreads(int n, Body body) {
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) threads.emplace_back([&body, i] { body(i); });
  for (std::thread& t : threads) t.join();
}

void Serve(UcxNode& node, UcxPeer parent, int iters, size_t size, int lat_iters, int threads) {
  std::vector<char> buffer(size);
  for (int i = 0; i < iters; ++i) {
    Value(node.ReceiveInto(kData, absl::MakeSpan(buffer), kTimeout, &parent), "receive data");
  }
  Check(node.Send(parent, kAck, "ack", kTimeout), "send ack");
  RunThreads(threads, [&](int) {
    std::vector<char> mine(size);
    for (int i = 0; i < iters / threads; ++i) {
      Value(node.ReceiveInto(kData2, absl::MakeSpan(mine), kTimeout, &parent), "receive data");
    }
  });
  Check(node.Send(parent, kAck, "ack", kTimeout), "send ack");
  char ping[64];
  for (int i = 0; i < lat_iters; ++i) {
    size_t n = Value(node.ReceiveInto(kPing, absl::MakeSpan(ping), kTimeout, &parent), "ping");
    Check(node.Send(parent, kPong, absl::string_view(ping, n), kTimeout), "pong");
  }
  std::unique_ptr<UcxMemoryRegion> region =
      Value(node.RegisterMemory(buffer.data(), size), "register");
  uint64_t address = region->address();
  std::string announce(reinterpret_cast<const char*>(&address), sizeof(address));
  Check(node.Send(parent, kRkey, announce + region->packed_rkey(), kTimeout), "send rkey");
  Value(node.Receive(parent, kDone, absl::Minutes(2)), "receive done");
}

// Context switches of this process's threads so far: the cost of handing
// work between threads, which a busy-polling ucx_perftest does not pay.
long ContextSwitches() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_nvcsw + usage.ru_nivcsw;
}

double MBps(double bytes, absl::Duration d) {
  return bytes / (1 << 20) / absl::ToDoubleSeconds(d);
}

// --peer_cmd as argv words (empty: the serving side runs on this host).
std::vector<std::string> PeerCommandPrefix() {
  return absl::StrSplit(absl::GetFlag(FLAGS_peer_cmd), ' ', absl::SkipEmpty());
}

// The fds the serving side reads the measuring side's address from and
// writes its own to, when started through --peer_cmd.
constexpr int kServeInFd = 3, kServeOutFd = 4;

UcxNodeOptions NodeOptions(const char* name) {
  UcxNodeOptions options;
  options.name = name;
  if (absl::GetFlag(FLAGS_busy_poll_us) >= 0) {
    options.busy_poll = absl::Microseconds(absl::GetFlag(FLAGS_busy_poll_us));
  }
  return options;
}

// The serving side in this process: publish our address on `out_fd`,
// connect to the one read from `in_fd`, serve, exit.
[[noreturn]] void RunServer(int in_fd, int out_fd, int iters, size_t size, int lat_iters,
                            int threads) {
  alarm(300);  // a hung run ends
  std::unique_ptr<UcxNode> node = Value(UcxNode::Create(NodeOptions("bench-server")), "create");
  WriteAll(out_fd, node->address());
  UcxPeer parent = Value(node->Connect(ReadFrame(in_fd), "bench-client"), "connect");
  Serve(*node, parent, iters, size, lat_iters, threads);
  node.reset();
  _exit(0);
}

// Starts the serving side through --peer_cmd: this binary with --serve and
// the same settings, `to_server` as its fd 3 and `from_server` as its fd 4.
pid_t SpawnServer(int to_server, int from_server, const std::string& tls, int iters, size_t size,
                  int lat_iters, int threads) {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) Die("readlink /proc/self/exe");
  self[n] = '\0';
  std::vector<std::string> argv = PeerCommandPrefix();
  argv.insert(argv.end(),
              {self, "--serve", absl::StrCat("--tls=", tls), absl::StrCat("--iters=", iters),
               absl::StrCat("--size=", size), absl::StrCat("--lat_iters=", lat_iters),
               absl::StrCat("--threads=", threads),
               absl::StrCat("--busy_poll_us=", absl::GetFlag(FLAGS_busy_poll_us))});
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, to_server, kServeInFd);
  posix_spawn_file_actions_adddup2(&actions, from_server, kServeOutFd);
  pid_t pid;
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) Die(absl::StrCat("--peer_cmd: cannot run ", argv[0], ": ", strerror(rc)));
  return pid;
}

// One ucx_perftest run (see perftest_runner.h), its server through --peer_cmd.
PerftestFinal Perftest(const std::vector<std::string>& test_args) {
  PerftestSetup setup;
  setup.server_prefix = PeerCommandPrefix();
  setup.host = absl::GetFlag(FLAGS_perftest_host);
  setup.port = absl::GetFlag(FLAGS_perftest_port);
  return Value(RunPerftest(setup, test_args), "--perftest");
}

int Main() {
  const std::string tls = absl::GetFlag(FLAGS_tls);
  const int iters = absl::GetFlag(FLAGS_iters);
  const size_t size = static_cast<size_t>(absl::GetFlag(FLAGS_size));
  const int lat_iters = absl::GetFlag(FLAGS_lat_iters);
  const int threads = std::max(1, absl::GetFlag(FLAGS_threads));
  setenv("UCX_TLS", tls.c_str(), 1);

  if (absl::GetFlag(FLAGS_serve)) RunServer(kServeInFd, kServeOutFd, iters, size, lat_iters, threads);

  int down[2], up[2];
  if (pipe2(down, O_CLOEXEC) != 0 || pipe2(up, O_CLOEXEC) != 0) Die("pipe");
  const bool remote = !PeerCommandPrefix().empty();
  pid_t child;
  if (remote) {
    child = SpawnServer(down[0], up[1], tls, iters, size, lat_iters, threads);
  } else {
    child = fork();
    if (child < 0) Die("fork");
    if (child == 0) RunServer(down[0], up[1], iters, size, lat_iters, threads);
  }
  // Ours closed: a serving side that dies makes ReadFrame fail instead of hang.
  close(down[0]);
  close(up[1]);
  std::unique_ptr<UcxNode> node = Value(UcxNode::Create(NodeOptions("bench-client")), "create");
  std::string child_address = ReadFrame(up[0]);
  WriteAll(down[1], node->address());
  UcxPeer peer = Value(node->Connect(child_address, "bench-server"), "connect");

  std::string data(size, 'd');
  long switches = ContextSwitches();
  absl::Time start = absl::Now();
  for (int i = 0; i < iters; ++i) Check(node->Send(peer, kData, data, kTimeout), "send");
  Value(node->Receive(peer, kAck, kTimeout), "ack");
  const double send_mbps = MBps(static_cast<double>(size) * iters, absl::Now() - start);
  const double send_switches = static_cast<double>(ContextSwitches() - switches) / iters;

  // The same bytes from `threads` callers at once: UCX pipelines their
  // rendezvous, as an agent serving several transfers would see.
  start = absl::Now();
  RunThreads(threads, [&](int) {
    for (int i = 0; i < iters / threads; ++i) Check(node->Send(peer, kData2, data, kTimeout), "send");
  });
  Value(node->Receive(peer, kAck, kTimeout), "ack");
  const double send_mbps_threads =
      MBps(static_cast<double>(size) * (iters / threads) * threads, absl::Now() - start);

  std::vector<double> rtts;
  rtts.reserve(lat_iters);
  switches = ContextSwitches();
  char ping[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  char pong[64];
  for (int i = 0; i < lat_iters; ++i) {
    absl::Time t0 = absl::Now();
    Check(node->Send(peer, kPing, absl::string_view(ping, sizeof(ping)), kTimeout), "ping");
    Value(node->ReceiveInto(kPong, absl::MakeSpan(pong), kTimeout, &peer), "pong");
    rtts.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
  }
  const double rtt_switches = static_cast<double>(ContextSwitches() - switches) / lat_iters;
  std::sort(rtts.begin(), rtts.end());
  const double rtt_p50 = rtts[rtts.size() / 2];
  const double rtt_p99 = rtts[std::min(rtts.size() - 1, rtts.size() * 99 / 100)];

  std::string announce = Value(node->Receive(peer, kRkey, kTimeout), "rkey");
  uint64_t address;
  std::memcpy(&address, announce.data(), sizeof(address));
  std::string rkey = announce.substr(sizeof(address));
  start = absl::Now();
  for (int i = 0; i < iters; ++i) {
    Check(node->Get(peer, address, rkey, data.data(), size, kTimeout), "get");
  }
  const double get_mbps = MBps(static_cast<double>(size) * iters, absl::Now() - start);
  start = absl::Now();
  RunThreads(threads, [&](int) {
    std::string mine(size, '\0');
    for (int i = 0; i < iters / threads; ++i) {
      Check(node->Get(peer, address, rkey, mine.data(), size, kTimeout), "get");
    }
  });
  const double get_mbps_threads =
      MBps(static_cast<double>(size) * (iters / threads) * threads, absl::Now() - start);
  Check(node->Send(peer, kDone, "done", kTimeout), "done");
  node.reset();
  int status;
  waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Die("the serving child failed");

  std::string json = absl::StrCat(
      "{\"bench\":\"ucx_node\",\"tls\":\"", tls, "\",\"size\":", size, ",\"iters\":", iters,
      ",\"lat_iters\":", lat_iters, ",\"send_mbps\":", static_cast<int64_t>(send_mbps),
      ",\"get_mbps\":", static_cast<int64_t>(get_mbps), ",\"threads\":", threads,
      ",\"send_mbps_threads\":", static_cast<int64_t>(send_mbps_threads),
      ",\"get_mbps_threads\":", static_cast<int64_t>(get_mbps_threads),
      ",\"rtt_us_p50\":", rtt_p50, ",\"rtt_us_p99\":", rtt_p99,
      ",\"peer_cmd\":\"", absl::GetFlag(FLAGS_peer_cmd), "\"", ",\"switches_per_send\":", send_switches,
      ",\"switches_per_rtt\":", rtt_switches);
  if (absl::GetFlag(FLAGS_perftest)) {
    PerftestFinal bw =
        Perftest({"-t", "tag_bw", "-s", std::to_string(size), "-n", std::to_string(iters)});
    PerftestFinal lat = Perftest({"-t", "tag_lat", "-s", "8", "-n", std::to_string(lat_iters)});
    PerftestFinal get =
        Perftest({"-t", "ucp_get", "-s", std::to_string(size), "-n", std::to_string(iters)});
    const double perftest_mbps = bw.bandwidth_overall_mbps;
    const double perftest_rtt = 2 * lat.latency_p50_us;  // p50 of half round trips
    absl::StrAppend(&json, ",\"perftest_tag_bw_mbps\":", static_cast<int64_t>(perftest_mbps),
                    ",\"perftest_ucp_get_mbps\":", static_cast<int64_t>(get.bandwidth_overall_mbps),
                    ",\"perftest_rtt_us_p50\":", perftest_rtt,
                    ",\"get_vs_perftest_ucp_get\":", get_mbps / get.bandwidth_overall_mbps,
                    ",\"send_vs_perftest\":", send_mbps / perftest_mbps,
                    ",\"get_vs_perftest\":", get_mbps / perftest_mbps,
                    ",\"send_threads_vs_perftest\":", send_mbps_threads / perftest_mbps,
                    ",\"get_threads_vs_perftest\":", get_mbps_threads / perftest_mbps,
                    ",\"rtt_vs_perftest\":", rtt_p50 / perftest_rtt);
  }
  printf("%s}\n", json.c_str());
  return 0;
}

}  // namespace
}  // namespace dragon::common

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dragon::common::Main();
}
