// shm_channel_bench: ShmChannel (shm_channel.h) between two processes of
// this host (the parent measures, a forked child receives and echoes), next
// to memcpy and, with --perftest, ucx_perftest over UCX's shared memory
// (UCX_TLS=posix,self). Issue 14, "Benchmarks": "channel bandwidth and
// latency within a node next to memcpy and ucx_perftest (posix)". Prints one
// JSON line.
//
//   bazel run //common:shm_channel_bench -- [--iters=1000] [--size=1048576]
//       [--lat_iters=10000] [--capacity=16] [--perftest]
//
// Both processes use one pool, made in /dev/shm for the run and removed at
// its end, also when it fails (exit, SIGINT, SIGTERM; the child is killed).
// Measured (MB/s as ucx_perftest counts them, 2^20 bytes per MB):
//  - send_mbps: `iters` messages of `size` bytes through one channel, the
//    child copying each out into one buffer of its own (ReceiveInto), as
//    ucx_perftest's tag_bw receives into a buffer; from the first Send to
//    the child's acknowledgement (through a second channel) of the last.
//    A message is copied twice: into a pool block by Send, out by the
//    receiver.
//  - send_by_ref_mbps: the same, the child taking each block and freeing it
//    unread (Receive, Free): the channel without the copy out, i.e. what a
//    receiver reading the block in place starts from.
//  - rtt_us_p50/p99: round trips of 8 bytes, ping through one channel and
//    the echo through another (the child's ReceiveInto + Send).
//  - rtt_same_cpu_share: the share of those round trips whose echo came
//    from the parent's own CPU (the child writes its CPU into the echo): on
//    a loaded machine the scheduler often keeps the pair on one CPU, where
//    a round trip is a context switch each way, not a spin.
//    rtt_apart_us_p50: the p50 of the others (each process on a CPU of its
//    own, as ucx_perftest's two always-spinning processes are), left out
//    when there were none.
//  - send_receive_local_us: one 8 B Send and its ReceiveInto in one process,
//    nobody waiting: the channel's own work per message (lock, pool block,
//    ownership hand-over), without any wake-up.
//  - futex_rtt_us_p50, spin_rtt_us_p50: the floors of a round trip between
//    two processes that sleep in a futex (as a ShmChannel receiver does) or
//    spin (as ucx_perftest does): a counter in a shared page, no channel.
//  - memcpy_cached_mbps: memcpy of `size` bytes between two buffers used
//    again and again (in cache when 2 x size fits in it): the copy's ceiling.
//  - memcpy_large_mbps: memcpy of a buffer 4x the last-level cache (at least
//    64 MiB): a copy from and to memory.
// With --perftest, also `ucx_perftest -t tag_bw -s <size> -n <iters>` and
// `-t tag_lat -s 8 -n <lat_iters>` on 127.0.0.1 with UCX_TLS=posix,self,
// and the ratios to them (tag_lat reports half a round trip: doubled here).
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/perftest_runner.h"
#include "common/shm_channel.h"
#include "common/shm_pool.h"

ABSL_FLAG(int, iters, 1000, "messages for the bandwidths");
ABSL_FLAG(int, size, 1 << 20, "bytes per message (and per memcpy in cache)");
ABSL_FLAG(int, lat_iters, 10000, "round trips for the latency");
ABSL_FLAG(int, capacity, 16, "slots of the data channel (messages in flight)");
ABSL_FLAG(int, large_mb, 0, "MiB of the out-of-cache memcpy (0: 4x the last-level cache, >= 64)");
ABSL_FLAG(bool, perftest, false, "also run ucx_perftest tag_bw and tag_lat with UCX_TLS=posix,self");
ABSL_FLAG(int, perftest_port, 13519, "ucx_perftest's port");

namespace dragon::common {
namespace {

const absl::Duration kTimeout = absl::Seconds(30);

// What the exit paths clean up: the pool's file and the child. Plain
// globals, since a signal handler reads them.
char g_pool_path[256];
pid_t g_creator = 0;
std::atomic<pid_t> g_child{0};

void Cleanup() {
  if (getpid() != g_creator) return;  // a forked child leaves both alone
  if (pid_t child = g_child.exchange(0); child > 0) {
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
  }
  if (g_pool_path[0] != '\0') unlink(g_pool_path);
}

void OnSignal(int sig) {
  Cleanup();  // unlink, kill and waitpid are async-signal-safe
  _exit(128 + sig);
}

[[noreturn]] void Die(const std::string& what) {
  fprintf(stderr, "shm_channel_bench: %s\n", what.c_str());
  if (getpid() != g_creator) _exit(1);
  exit(1);  // atexit: Cleanup
}
void Check(const absl::Status& status, const std::string& what) {
  if (!status.ok()) Die(what + ": " + status.ToString());
}
template <typename T>
T Value(absl::StatusOr<T> v, const std::string& what) {
  Check(v.status(), what);
  return *std::move(v);
}

double MBps(double bytes, absl::Duration d) { return bytes / (1 << 20) / absl::ToDoubleSeconds(d); }

// Keeps the compiler from dropping copies whose result nobody reads.
void Clobber(void* p) { asm volatile("" : : "g"(p) : "memory"); }

// Best of 3 passes, each copying `from` into `to` until about 1 GiB moved.
double MemcpyMBps(const char* from, char* to, size_t bytes) {
  const int reps = static_cast<int>(std::max<size_t>(1, (size_t{1} << 30) / bytes));
  double best = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const absl::Time start = absl::Now();
    for (int i = 0; i < reps; ++i) {
      std::memcpy(to, from, bytes);
      Clobber(to);
    }
    best = std::max(best, MBps(static_cast<double>(bytes) * reps, absl::Now() - start));
  }
  return best;
}

// The largest cache of CPU 0 as sysfs lists it (glibc's sysconf reported
// 10x the L3 of this machine's virtual EPYC); 32 MiB when sysfs has none.
size_t LastLevelCacheBytes() {
  size_t largest = 0;
  for (int index = 0; index < 8; ++index) {
    FILE* f = fopen(absl::StrCat("/sys/devices/system/cpu/cpu0/cache/index", index, "/size").c_str(), "r");
    if (f == nullptr) break;
    unsigned long value = 0;
    char unit = 0;
    if (fscanf(f, "%lu%c", &value, &unit) >= 1) {
      const size_t bytes = unit == 'K' ? value << 10 : unit == 'M' ? value << 20 : value;
      largest = std::max(largest, bytes);
    }
    fclose(f);
  }
  return largest > 0 ? largest : size_t{32} << 20;
}

// The floors of a round trip between two processes, to tell the channel's
// own cost from its way of waiting: a counter in a shared page bounced
// `rounds` times, each side either spinning on it (what ucx_perftest's
// posix transport does) or sleeping on it in a futex (what a ShmChannel
// receiver does). Returns the p50 of the round trips in microseconds.
double BounceRttP50(bool spin, int rounds) {
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) Die("mmap a shared page");
  auto* word = new (page) std::atomic<uint32_t>(0);
  auto await = [&](uint32_t want) {
    for (uint32_t seen; (seen = word->load(std::memory_order_acquire)) != want;) {
      if (!spin) {
        shm_object::FutexWait(word, seen, shm_object::MonotonicNow() + absl::Milliseconds(100));
      }
    }
  };
  auto post = [&](uint32_t value) {
    word->store(value, std::memory_order_release);
    if (!spin) shm_object::FutexWake(word, 1);
  };
  const pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) {
    alarm(60);  // a lost wake-up ends
    for (int i = 0; i < rounds; ++i) {
      await(2 * i + 1);
      post(2 * i + 2);
    }
    _exit(0);
  }
  g_child = child;
  std::vector<double> rtts;
  rtts.reserve(rounds);
  for (int i = 0; i < rounds; ++i) {
    const absl::Time t0 = absl::Now();
    post(2 * i + 1);
    await(2 * i + 2);
    rtts.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
  }
  waitpid(child, nullptr, 0);
  g_child = 0;
  munmap(page, 4096);
  std::sort(rtts.begin(), rtts.end());
  return rtts[rtts.size() / 2];
}

struct Channels {
  ShmPool* pool;
  ShmChannel data, ack, ping, pong;
};

// The child: receives the two bandwidth runs (each `warmup` + `messages`
// long, acknowledging the end of each), then echoes `pings` pings.
int Serve(Channels& c, int messages, int pings) {
  const pid_t parent = getppid();
  std::string buffer;
  for (int i = 0; i < messages; ++i) Check(c.data.ReceiveInto(buffer, kTimeout, parent), "receive");
  Check(c.ack.Send(absl::MakeConstSpan("a", 1), kTimeout, parent), "ack");
  for (int i = 0; i < messages; ++i) {
    ShmMessage m = Value(c.data.Receive(kTimeout, parent), "receive by reference");
    Check(c.pool->Free(m.block), "free a received block");
  }
  Check(c.ack.Send(absl::MakeConstSpan("a", 1), kTimeout, parent), "ack");
  std::string ping;
  for (int i = 0; i < pings; ++i) {
    Check(c.ping.ReceiveInto(ping, kTimeout, parent), "ping");
    const int32_t cpu = sched_getcpu();  // for rtt_same_cpu_share
    if (ping.size() >= sizeof(cpu)) memcpy(&ping[0], &cpu, sizeof(cpu));
    Check(c.pong.Send(absl::MakeConstSpan(ping.data(), ping.size()), kTimeout, parent), "pong");
  }
  return 0;
}

// `count` messages of `data` through the data channel, then the child's
// acknowledgement: MB/s of the last `timed` of them (the first ones fault
// the pool's pages in, in both processes). Conservative: the clock starts
// with up to `capacity` untimed messages still queued for the receiver.
double SendRun(Channels& c, const std::string& data, int count, int timed, pid_t child) {
  std::string ack;
  absl::Time start = absl::Now();
  for (int i = 0; i < count; ++i) {
    if (i == count - timed) start = absl::Now();
    Check(c.data.Send(absl::MakeConstSpan(data.data(), data.size()), kTimeout, child), "send");
  }
  Check(c.ack.ReceiveInto(ack, kTimeout, child), "receive the acknowledgement");
  return MBps(static_cast<double>(data.size()) * timed, absl::Now() - start);
}

std::string Json(const std::vector<std::pair<std::string, double>>& fields) {
  std::string json = "{\"bench\":\"shm_channel\"";
  for (const auto& [key, value] : fields) {
    char number[64];  // counts as integers, measurements to 4 decimals (never 1.04858e+06)
    snprintf(number, sizeof(number), value == static_cast<double>(static_cast<int64_t>(value))
                                         ? "%.0f" : "%.4f", value);
    absl::StrAppend(&json, ",\"", key, "\":", number);
  }
  return json + "}";
}

int Main() {
  const int iters = std::max(1, absl::GetFlag(FLAGS_iters));
  const size_t size = static_cast<size_t>(std::max(1, absl::GetFlag(FLAGS_size)));
  const int lat_iters = std::max(1, absl::GetFlag(FLAGS_lat_iters));
  const uint32_t capacity = static_cast<uint32_t>(std::max(1, absl::GetFlag(FLAGS_capacity)));
  const int warmup = static_cast<int>(std::min<uint32_t>(2 * capacity, 64));
  const int lat_warmup = std::min(lat_iters, 1000);

  // The pool: every queued message is a block, plus the sender's next one
  // and the receiver's last, twice over for the buddy allocator's rounding.
  g_creator = getpid();
  ShmPoolOptions options;
  options.name = absl::StrCat("dragon-channel-bench-", getpid(), "-", std::random_device()());
  options.size_bytes = std::max<uint64_t>(uint64_t{64} << 20, 2 * (capacity + 4) * size);
  snprintf(g_pool_path, sizeof(g_pool_path), "%s/%s", options.dir.c_str(), options.name.c_str());
  atexit(Cleanup);
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  std::unique_ptr<ShmPool> pool = Value(ShmPool::Create(options), "create the pool");
  auto open = [&](uint32_t slots, const char* what) {
    BlockRef ref = Value(ShmChannel::Create(*pool, slots), what);
    return Value(ShmChannel::Open(*pool, ref), what);
  };
  Channels c{pool.get(), open(capacity, "data channel"), open(4, "ack channel"),
             open(4, "ping channel"), open(4, "pong channel")};

  const pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) {
    alarm(300);  // a hung run ends
    _exit(Serve(c, warmup + iters, lat_warmup + lat_iters));
  }
  g_child = child;

  const std::string data(size, 'd');
  const double send_mbps = SendRun(c, data, warmup + iters, iters, child);
  const double send_by_ref_mbps = SendRun(c, data, warmup + iters, iters, child);

  std::vector<double> rtts, rtts_apart;
  rtts.reserve(lat_iters);
  rtts_apart.reserve(lat_iters);
  const char ping[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  std::string pong;
  for (int i = 0; i < lat_warmup + lat_iters; ++i) {
    const absl::Time t0 = absl::Now();
    Check(c.ping.Send(absl::MakeConstSpan(ping, sizeof(ping)), kTimeout, child), "ping");
    Check(c.pong.ReceiveInto(pong, kTimeout, child), "pong");
    if (i < lat_warmup) continue;
    const double rtt = absl::ToDoubleMicroseconds(absl::Now() - t0);
    rtts.push_back(rtt);
    int32_t their_cpu = -1;
    if (pong.size() >= sizeof(their_cpu)) memcpy(&their_cpu, pong.data(), sizeof(their_cpu));
    if (their_cpu != sched_getcpu()) rtts_apart.push_back(rtt);
  }
  const double same_cpu_share = 1.0 - static_cast<double>(rtts_apart.size()) / rtts.size();
  std::sort(rtts_apart.begin(), rtts_apart.end());
  const double rtt_apart_p50 = rtts_apart.empty() ? 0 : rtts_apart[rtts_apart.size() / 2];
  std::sort(rtts.begin(), rtts.end());
  const double rtt_p50 = rtts[rtts.size() / 2];
  const double rtt_p99 = rtts[std::min(rtts.size() - 1, rtts.size() * 99 / 100)];

  int status = 0;
  waitpid(child, &status, 0);
  g_child = 0;

  // The channel's own work per 8 B message, with nobody waiting: Send then
  // ReceiveInto in this process. Twice this plus the spin floor is what a
  // round trip would cost if the receiver spun instead of sleeping.
  const absl::Time local_start = absl::Now();
  for (int i = 0; i < lat_iters; ++i) {
    Check(c.ping.Send(absl::MakeConstSpan(ping, sizeof(ping)), kTimeout), "local send");
    Check(c.ping.ReceiveInto(pong, kTimeout), "local receive");
  }
  const double local_us = absl::ToDoubleMicroseconds(absl::Now() - local_start) / lat_iters;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Die("the receiving child failed");
  for (ShmChannel* channel : {&c.data, &c.ack, &c.ping, &c.pong}) {
    Check(channel->Destroy(), "destroy a channel");
  }
  pool.reset();  // removes the file

  const int bounces = std::min(lat_iters, 20000);
  const double futex_rtt_p50 = BounceRttP50(/*spin=*/false, bounces);
  const double spin_rtt_p50 = BounceRttP50(/*spin=*/true, bounces);

  std::string to(size, '\0');
  const double memcpy_cached_mbps = MemcpyMBps(data.data(), to.data(), size);
  const int large_mb = absl::GetFlag(FLAGS_large_mb);
  const size_t large = large_mb > 0 ? size_t(large_mb) << 20
                                    : std::max<size_t>(size_t{64} << 20, 4 * LastLevelCacheBytes());
  std::vector<char> big_from(large, 'b'), big_to(large, '\0');  // both touched: no page faults timed
  const double memcpy_large_mbps = MemcpyMBps(big_from.data(), big_to.data(), large);

  std::vector<std::pair<std::string, double>> fields = {
      {"size", static_cast<double>(size)},
      {"iters", static_cast<double>(iters)},
      {"lat_iters", static_cast<double>(lat_iters)},
      {"capacity", static_cast<double>(capacity)},
      {"send_mbps", send_mbps},
      {"send_by_ref_mbps", send_by_ref_mbps},
      {"rtt_us_p50", rtt_p50},
      {"rtt_us_p99", rtt_p99},
      {"rtt_same_cpu_share", same_cpu_share},
      {"send_receive_local_us", local_us},
      {"futex_rtt_us_p50", futex_rtt_p50},
      {"spin_rtt_us_p50", spin_rtt_p50},
      {"memcpy_cached_mbps", memcpy_cached_mbps},
      {"memcpy_large_bytes", static_cast<double>(large)},
      {"memcpy_large_mbps", memcpy_large_mbps},
      {"llc_bytes", static_cast<double>(LastLevelCacheBytes())},
      {"send_vs_memcpy_cached", send_mbps / memcpy_cached_mbps},
      {"send_vs_memcpy_large", send_mbps / memcpy_large_mbps}};
  if (!rtts_apart.empty()) fields.push_back({"rtt_apart_us_p50", rtt_apart_p50});
  if (absl::GetFlag(FLAGS_perftest)) {
    setenv("UCX_TLS", "posix,self", 1);
    PerftestSetup setup;
    setup.port = absl::GetFlag(FLAGS_perftest_port);
    PerftestFinal bw = Value(
        RunPerftest(setup, {"-t", "tag_bw", "-s", std::to_string(size), "-n", std::to_string(iters)}),
        "--perftest tag_bw");
    PerftestFinal lat = Value(
        RunPerftest(setup, {"-t", "tag_lat", "-s", "8", "-n", std::to_string(lat_iters)}),
        "--perftest tag_lat");
    const double perftest_rtt = 2 * lat.latency_p50_us;
    fields.insert(fields.end(), {{"perftest_tag_bw_mbps", bw.bandwidth_overall_mbps},
                                 {"perftest_rtt_us_p50", perftest_rtt},
                                 {"send_vs_perftest", send_mbps / bw.bandwidth_overall_mbps},
                                 {"send_by_ref_vs_perftest", send_by_ref_mbps / bw.bandwidth_overall_mbps},
                                 {"rtt_vs_perftest", rtt_p50 / perftest_rtt}});
    if (!rtts_apart.empty()) fields.push_back({"rtt_apart_vs_perftest", rtt_apart_p50 / perftest_rtt});
  }
  printf("%s\n", Json(fields).c_str());
  return 0;
}

}  // namespace
}  // namespace dragon::common

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return dragon::common::Main();
}
