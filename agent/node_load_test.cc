#include "agent/node_load.h"

#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/test_dir.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

// As this file's author's machine printed them (2 CPUs), cut short.
constexpr char kStat[] =
    "cpu  790283 3260 246027 1500619 9142 0 7967 3912 0 0\n"
    "cpu0 372608 1777 120147 778269 1611 0 3849 2003 0 0\n"
    "cpu1 417674 1482 125879 722350 7530 0 4118 1909 0 0\n"
    "intr 18643876 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1\n"
    "ctxt 88770240\n"
    "btime 1796584495\n"
    "processes 462988\n"
    "procs_running 1\n"
    "procs_blocked 0\n"
    "softirq 15554209 0 857955 804 9593182 377177 0 741 1294618 1081658 2348074\n";

constexpr char kMeminfo[] =
    "MemTotal:       24683772 kB\n"
    "MemFree:        22792292 kB\n"
    "MemAvailable:   23929908 kB\n"
    "Buffers:           31732 kB\n"
    "Cached:          1270764 kB\n"
    "HugePages_Total:       0\n";

constexpr char kLoadavg[] = "0.18 0.69 1.18 1/138 9192\n";
constexpr char kStatm[] = "765 409 381 5 0 123 0\n";

TEST_CASE("/proc/stat: busy and total jiffies of the cpu line, cpuN lines counted", "[node_load]") {
  absl::StatusOr<CpuTimes> t = ParseProcStat(kStat);
  REQUIRE(t.ok());
  CHECK(t->busy == 790283u + 3260 + 246027 + 0 + 7967 + 3912);
  CHECK(t->total == t->busy + 1500619 + 9142);
  CHECK(t->cpus == 2);

  // guest and guest_nice are inside user and nice: not added twice.
  t = ParseProcStat("cpu 10 20 30 400 50 1 2 3 7 9\ncpu0 10 20 30 400 50 1 2 3 7 9\n");
  REQUIRE(t.ok());
  CHECK(t->busy == 66);
  CHECK(t->total == 516);
  // An old kernel's four numbers: the rest count 0.
  t = ParseProcStat("cpu 1 2 3 4\ncpu0 1 2 3 4\ncpu1 0 0 0 0\ncpu2 0 0 0 0\n");
  REQUIRE(t.ok());
  CHECK(t->busy == 6);
  CHECK(t->total == 10);
  CHECK(t->cpus == 3);
}

TEST_CASE("/proc/stat: malformed text is an error naming the file and the gap", "[node_load]") {
  absl::StatusOr<CpuTimes> t = ParseProcStat("");
  CHECK(absl::IsInvalidArgument(t.status()));
  CHECK_THAT(std::string(t.status().message()), Catch::Contains("/proc/stat") &&
                                                    Catch::Contains("no aggregate 'cpu' line"));
  t = ParseProcStat("cpu0 1 2 3 4\nintr 5\n");
  CHECK_THAT(std::string(t.status().message()), Catch::Contains("no aggregate 'cpu' line"));
  t = ParseProcStat("cpu 1 2 3\ncpu0 1 2 3\n");
  CHECK(absl::IsInvalidArgument(t.status()));
  CHECK_THAT(std::string(t.status().message()), Catch::Contains("holds 3 numbers"));
  t = ParseProcStat("cpu 1 2 x 4\ncpu0 1 2 3 4\n");
  CHECK_THAT(std::string(t.status().message()), Catch::Contains("number 3"));
  t = ParseProcStat("cpu 1 2 3 4\nintr 5\n");
  CHECK_THAT(std::string(t.status().message()), Catch::Contains("no 'cpuN' line"));
}

TEST_CASE("/proc/meminfo: MemTotal and MemAvailable in bytes", "[node_load]") {
  absl::StatusOr<MemInfo> m = ParseMeminfo(kMeminfo);
  REQUIRE(m.ok());
  CHECK(m->total_bytes == 24683772ull * 1024);
  CHECK(m->available_bytes == 23929908ull * 1024);

  m = ParseMeminfo("MemTotal:       24683772 kB\nMemFree:        22792292 kB\n");
  CHECK(absl::IsInvalidArgument(m.status()));
  CHECK_THAT(std::string(m.status().message()),
             Catch::Contains("/proc/meminfo") && Catch::Contains("no MemAvailable line"));
  m = ParseMeminfo("MemAvailable: 5 kB\n");
  CHECK_THAT(std::string(m.status().message()), Catch::Contains("no MemTotal line"));
  m = ParseMeminfo("MemTotal: lots kB\nMemAvailable: 5 kB\n");
  CHECK_THAT(std::string(m.status().message()),
             Catch::Contains("not a number of kB") && Catch::Contains("MemTotal: lots"));
}

TEST_CASE("/proc/loadavg and /proc/PID/statm", "[node_load]") {
  absl::StatusOr<double> load = ParseLoadavg(kLoadavg);
  REQUIRE(load.ok());
  CHECK(*load == Approx(0.18));
  for (const char* bad : {"", "  \n", "busy 0.5\n", "-1 0 0\n"}) {
    load = ParseLoadavg(bad);
    CHECK(absl::IsInvalidArgument(load.status()));
    CHECK_THAT(std::string(load.status().message()), Catch::Contains("/proc/loadavg"));
  }

  absl::StatusOr<uint64_t> rss = ParseStatmRssBytes(kStatm, 4096);
  REQUIRE(rss.ok());
  CHECK(*rss == 409u * 4096);
  rss = ParseStatmRssBytes("765\n", 4096, "/proc/42/statm");
  CHECK(absl::IsInvalidArgument(rss.status()));
  CHECK_THAT(std::string(rss.status().message()),
             Catch::Contains("/proc/42/statm") && Catch::Contains("resident"));
  CHECK_FALSE(ParseStatmRssBytes("765 many 3\n", 4096).ok());
}

TEST_CASE("busy share between two readings, clamped, since boot when counters go back",
          "[node_load]") {
  CHECK(BusyPermille({}, {250, 1000, 1}) == 250);
  CHECK(BusyPermille({100, 1000, 1}, {350, 2000, 1}) == 250);
  CHECK(BusyPermille({100, 1000, 1}, {100, 1000, 1}) == 100);  // no tick between: since boot
  CHECK(BusyPermille({500, 1000, 1}, {400, 2000, 1}) == 200);  // went back: since boot
  CHECK(BusyPermille({}, {0, 0, 1}) == 0);
  CHECK(BusyPermille({0, 0, 1}, {2000, 3000, 1}) == 667);  // rounded
}

void Write(const std::filesystem::path& path, const std::string& text) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

TEST_CASE("the sampler over a proc dir: CPU share from the delta, workers' RSS, clock",
          "[node_load]") {
  common::TestDir dir("/tmp/dragon-node-load-test-");
  const std::filesystem::path proc = dir.path;
  common::FakeClock clock(absl::FromUnixSeconds(1'800'000'000));
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  // busy 100 of 1000 jiffies since boot, 4 CPUs.
  Write(proc / "stat",
        "cpu  60 0 40 850 50 0 0 0 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\n"
        "cpu2 1 0 0 0 0 0 0 0 0 0\ncpu3 1 0 0 0 0 0 0 0 0 0\nintr 1 2 3\n");
  Write(proc / "meminfo", kMeminfo);
  Write(proc / "loadavg", "2.50 1.00 0.50 3/200 4242\n");
  Write(proc / "101" / "statm", "1000 10 5 1 0 8 0\n");
  Write(proc / "102" / "statm", "1000 20 5 1 0 8 0\n");

  NodeLoadSampler sampler(proc.string(), &clock);
  dragon::v1::NodeLoad first = sampler.Sample({101, 102, 103});  // 103 has no statm
  CHECK(first.cpu_busy_permille() == 100);  // since boot
  CHECK(first.cpus() == 4);
  CHECK(first.mem_total_bytes() == 24683772ull * 1024);
  CHECK(first.mem_available_bytes() == 23929908ull * 1024);
  CHECK(first.load1() == Approx(2.5));
  CHECK(first.workers_rss_bytes() == 30 * page);
  CHECK(first.sampled_us() == int64_t{1'800'000'000} * 1'000'000);

  // 1000 more jiffies of which 250 busy (user 150, system 50, irq 25, steal
  // 25); worker 102 exited.
  Write(proc / "stat",
        "cpu  210 0 90 1500 150 25 0 25 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\n"
        "cpu2 1 0 0 0 0 0 0 0 0 0\ncpu3 1 0 0 0 0 0 0 0 0 0\nintr 1 2 3\n");
  std::filesystem::remove_all(proc / "102");
  clock.Advance(absl::Seconds(1));
  dragon::v1::NodeLoad second = sampler.Sample({101, 102});
  CHECK(second.cpu_busy_permille() == 250);
  CHECK(second.workers_rss_bytes() == 10 * page);
  CHECK(second.sampled_us() == int64_t{1'800'000'001} * 1'000'000);
}

// A /proc/PID/stat line with the fields the process tree reads: parent, group, RSS pages.
std::string StatLine(int pid, int ppid, int pgid, uint64_t rss_pages) {
  return absl::StrCat(pid, " (p ", pid, ") S ", ppid, " ", pgid, " ", pgid,
                      " 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 100 1000 ", rss_pages, " x\n");
}

TEST_CASE("the sampler counts the agent's whole process tree while executables run",
          "[node_load]") {
  common::TestDir dir("/tmp/dragon-node-load-test-");
  const std::filesystem::path proc = dir.path;
  common::FakeClock clock;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  Write(proc / "100" / "stat", StatLine(100, 1, 100, 50));    // the agent itself: not counted
  Write(proc / "101" / "stat", StatLine(101, 100, 100, 10));  // a Python worker
  Write(proc / "101" / "statm", "1000 10 5 1 0 8 0\n");
  Write(proc / "102" / "stat", StatLine(102, 100, 102, 5));   // mpiexec, its own group
  Write(proc / "103" / "stat", StatLine(103, 102, 102, 200)); // a rank on this node
  Write(proc / "104" / "stat", StatLine(104, 1, 102, 30));    // a rank whose parent died: its group
  Write(proc / "105" / "stat", StatLine(105, 101, 100, 7));   // what a Python task started
  Write(proc / "200" / "stat", StatLine(200, 1, 200, 999));   // another user's process
  NodeLoadSampler sampler(proc.string(), &clock);
  CHECK(sampler.Sample({101}).workers_rss_bytes() == 10 * page);  // the workers alone: cheap
  CHECK(sampler.Sample({101}, 100).workers_rss_bytes() == (10 + 5 + 200 + 30 + 7) * page);
  std::filesystem::remove_all(proc / "103");  // ended meanwhile: holds nothing
  CHECK(sampler.Sample({101}, 100).workers_rss_bytes() == (10 + 5 + 30 + 7) * page);
}

TEST_CASE("the sampler: unreadable or malformed files leave their fields 0, never fail",
          "[node_load]") {
  common::TestDir dir("/tmp/dragon-node-load-test-");
  const std::filesystem::path proc = dir.path;
  common::FakeClock clock;
  NodeLoadSampler sampler(proc.string(), &clock);
  // What the sampler logs, for the length of this test.
  std::ostringstream log;
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "node_load_test", std::make_shared<spdlog::sinks::ostream_sink_st>(log)));
  struct Restore {
    std::shared_ptr<spdlog::logger> logger;
    ~Restore() { spdlog::set_default_logger(logger); }
  } restore{previous};
  // Nothing there at all: no field, not even the time (nothing measured);
  // each missing file is logged once, not at every sample.
  for (int i = 0; i < 3; ++i) {
    dragon::v1::NodeLoad empty = sampler.Sample({1, 2});
    CHECK(empty.ByteSizeLong() == 0);
  }
  const std::string logged = log.str();
  CHECK(std::count(logged.begin(), logged.end(), '\n') == 3);  // stat, meminfo, loadavg
  CHECK_THAT(logged, Catch::Contains(absl::StrCat("cannot read ", dir.path, "/stat")));
  Write(proc / "stat", "cpu 1 2\n");  // malformed
  Write(proc / "meminfo", kMeminfo);
  Write(proc / "loadavg", "\n");
  Write(proc / "7" / "statm", "garbage\n");
  dragon::v1::NodeLoad load = sampler.Sample({7});
  CHECK(load.cpu_busy_permille() == 0);
  CHECK(load.cpus() == 0);
  CHECK(load.load1() == 0);
  CHECK(load.workers_rss_bytes() == 0);
  CHECK(load.mem_total_bytes() == 24683772ull * 1024);
  CHECK(load.sampled_us() == absl::ToUnixMicros(clock.Now()));
}

TEST_CASE("the sampler on this host's /proc", "[node_load]") {
  NodeLoadSampler sampler;
  dragon::v1::NodeLoad load = sampler.Sample({getpid()});
  CHECK(load.cpus() >= 1);
  CHECK(load.cpu_busy_permille() <= 1000);
  CHECK(load.mem_total_bytes() > 0);
  CHECK(load.mem_available_bytes() <= load.mem_total_bytes());
  CHECK(load.workers_rss_bytes() > 0);  // this test's own memory
  CHECK(load.sampled_us() > 0);
}

}  // namespace
}  // namespace dragon::agent
