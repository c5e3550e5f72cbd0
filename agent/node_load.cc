#include "agent/node_load.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/process_tree.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

// What an error quotes of a malformed file: enough to recognise it.
std::string Quote(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  if (text.size() > 40) return absl::StrCat("'", text.substr(0, 40), "...'");
  return absl::StrCat("'", text, "'");
}

std::vector<absl::string_view> Fields(absl::string_view line) {
  return absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
}

// The file at `path`, read up to the first occurrence of `stop_after` (all of
// it when empty or absent): /proc/stat's CPU lines come first, followed by
// an interrupt line that is long on large hosts and of no use here.
// NotFound when the file (a process's) does not exist (any more).
absl::StatusOr<std::string> ReadProcFile(const std::string& path,
                                         absl::string_view stop_after = "") {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string message = absl::StrCat("cannot read ", path, ": ", strerror(err));
    if (err == ENOENT || err == ESRCH) return absl::NotFoundError(message);
    return absl::UnavailableError(message);
  }
  std::string out;
  char buf[4096];
  while (true) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;  // ESRCH: the process exited between open and read
      close(fd);
      std::string message = absl::StrCat("cannot read ", path, ": ", strerror(err));
      if (err == ESRCH) return absl::NotFoundError(message);
      return absl::UnavailableError(message);
    }
    if (n == 0) break;
    const size_t searched = out.size() >= stop_after.size() ? out.size() - stop_after.size() : 0;
    out.append(buf, static_cast<size_t>(n));
    if (!stop_after.empty() && out.find(stop_after.data(), searched, stop_after.size()) != std::string::npos) break;
  }
  close(fd);
  return out;
}

// A meminfo value ("  24683772 kB") in bytes.
bool ParseKibibytes(absl::string_view value, uint64_t* bytes) {
  value = absl::StripAsciiWhitespace(value);
  if (absl::ConsumeSuffix(&value, "kB")) value = absl::StripTrailingAsciiWhitespace(value);
  uint64_t kib = 0;
  if (!absl::SimpleAtoi(value, &kib)) return false;
  *bytes = kib * 1024;
  return true;
}

}  // namespace

absl::StatusOr<CpuTimes> ParseProcStat(absl::string_view text) {
  CpuTimes times;
  bool aggregate = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, "cpu")) continue;
    if (line.size() > 3 && absl::ascii_isdigit(static_cast<unsigned char>(line[3]))) {
      ++times.cpus;
      continue;
    }
    std::vector<absl::string_view> f = Fields(line);
    if (f.empty() || f[0] != "cpu") continue;
    // user nice system idle [iowait irq softirq steal [guest guest_nice]]:
    // kernels before 2.6.11 give fewer, which count 0.
    if (f.size() < 5) {
      return absl::InvalidArgumentError(absl::StrCat(
          "/proc/stat: the 'cpu' line holds ", f.size() - 1,
          " numbers, expected at least 4 (user nice system idle): ", Quote(line)));
    }
    uint64_t v[8] = {};
    for (size_t i = 0; i < 8 && i + 1 < f.size(); ++i) {
      if (!absl::SimpleAtoi(f[i + 1], &v[i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "/proc/stat: number ", i + 1, " of the 'cpu' line is not one: ", Quote(line)));
      }
    }
    times.busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    times.total = times.busy + v[3] + v[4];
    aggregate = true;
  }
  if (!aggregate) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/stat: no aggregate 'cpu' line in ", Quote(text)));
  }
  if (times.cpus == 0) {
    return absl::InvalidArgumentError("/proc/stat: no 'cpuN' line (the online CPUs)");
  }
  return times;
}

absl::StatusOr<MemInfo> ParseMeminfo(absl::string_view text) {
  MemInfo mem;
  bool total = false;
  bool available = false;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    absl::string_view value = line;
    uint64_t* into = nullptr;
    bool* seen = nullptr;
    if (absl::ConsumePrefix(&value, "MemTotal:")) {
      into = &mem.total_bytes;
      seen = &total;
    } else if (absl::ConsumePrefix(&value, "MemAvailable:")) {
      into = &mem.available_bytes;
      seen = &available;
    } else {
      continue;
    }
    if (!ParseKibibytes(value, into)) {
      return absl::InvalidArgumentError(
          absl::StrCat("/proc/meminfo: not a number of kB: ", Quote(line)));
    }
    *seen = true;
  }
  // MemAvailable exists since Linux 3.14; without it nothing says what new
  // work could use (MemFree leaves out the reclaimable page cache).
  if (!total || !available) {
    return absl::InvalidArgumentError(absl::StrCat("/proc/meminfo: no ",
                                                   !total ? "MemTotal" : "MemAvailable", " line"));
  }
  return mem;
}

absl::StatusOr<double> ParseLoadavg(absl::string_view text) {
  std::vector<absl::string_view> f = Fields(absl::StripAsciiWhitespace(text));
  double load = 0;
  if (f.empty() || !absl::SimpleAtod(f[0], &load) || !std::isfinite(load) || load < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/loadavg: no 1-minute load average in ", Quote(text)));
  }
  return load;
}

absl::StatusOr<uint64_t> ParseStatmRssBytes(absl::string_view text, uint64_t page_size,
                                            absl::string_view path) {
  // size resident shared text lib data dt, in pages.
  std::vector<absl::string_view> f = Fields(absl::StripAsciiWhitespace(text));
  uint64_t pages = 0;
  if (f.size() < 2 || !absl::SimpleAtoi(f[1], &pages)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no resident page count (its second number) in ", Quote(text)));
  }
  return pages * page_size;
}

uint32_t BusyPermille(const CpuTimes& before, const CpuTimes& now) {
  uint64_t busy = now.busy;
  uint64_t total = now.total;
  if (now.total > before.total && now.busy >= before.busy &&
      now.busy - before.busy <= now.total - before.total) {
    busy = now.busy - before.busy;
    total = now.total - before.total;
  }
  if (total == 0) return 0;
  return static_cast<uint32_t>(std::min<uint64_t>((busy * 1000 + total / 2) / total, 1000));
}

NodeLoadSampler::NodeLoadSampler(std::string proc_root, const common::Clock* clock)
    : proc_root_(std::move(proc_root)),
      clock_(clock != nullptr ? clock : common::RealClock()),
      page_size_([] {
        const long size = sysconf(_SC_PAGESIZE);
        return size > 0 ? static_cast<uint64_t>(size) : uint64_t{4096};
      }()) {}

void NodeLoadSampler::WarnOnce(bool* warned, const absl::Status& status) {
  if (*warned) return;
  *warned = true;
  // Heartbeats come every second: one line says it, not one per heartbeat.
  spdlog::warn("node load: {}; what it gives is reported as 0 (not logged again)",
               std::string(status.message()));
}

dragon::v1::NodeLoad NodeLoadSampler::Sample(const std::vector<pid_t>& worker_pids,
                                             pid_t tree_root) {
  dragon::v1::NodeLoad load;
  bool measured = false;
  absl::MutexLock l(&mu_);

  absl::StatusOr<std::string> text = ReadProcFile(proc_root_ + "/stat", "\nintr ");
  absl::StatusOr<CpuTimes> cpu = text.ok() ? ParseProcStat(*text) : text.status();
  if (cpu.ok()) {
    load.set_cpu_busy_permille(BusyPermille(last_cpu_, *cpu));
    load.set_cpus(cpu->cpus);
    last_cpu_ = *cpu;
    measured = true;
  } else {
    WarnOnce(&warned_stat_, cpu.status());
  }

  text = ReadProcFile(proc_root_ + "/meminfo");
  absl::StatusOr<MemInfo> mem = text.ok() ? ParseMeminfo(*text) : text.status();
  if (mem.ok()) {
    load.set_mem_total_bytes(mem->total_bytes);
    load.set_mem_available_bytes(mem->available_bytes);
    measured = true;
  } else {
    WarnOnce(&warned_meminfo_, mem.status());
  }

  text = ReadProcFile(proc_root_ + "/loadavg");
  absl::StatusOr<double> load1 = text.ok() ? ParseLoadavg(*text) : text.status();
  if (load1.ok()) {
    load.set_load1(*load1);
    measured = true;
  } else {
    WarnOnce(&warned_loadavg_, load1.status());
  }

  uint64_t rss = 0;
  if (tree_root > 0) {
    // A scan of /proc is a few hundred small reads: only while executables
    // run, whose processes the worker pids do not name.
    const std::vector<ProcInfo> procs = ListProcesses(proc_root_);
    const std::vector<int> tree = TreeOf(tree_root, procs);
    const std::unordered_set<int> in_tree(tree.begin(), tree.end());
    // An executable leads a process group of its own; a process of it whose
    // parent died has left the tree, not the group.
    std::unordered_set<int> led_groups;
    for (const ProcInfo& p : procs) {
      const bool leads_a_group = p.pgid == p.pid;
      if (p.pid != tree_root && leads_a_group && in_tree.count(p.pid) != 0) {
        led_groups.insert(p.pid);
      }
    }
    for (const ProcInfo& p : procs) {
      if (p.pid != tree_root && (in_tree.count(p.pid) != 0 || led_groups.count(p.pgid) != 0)) {
        rss += p.rss_pages * page_size_;
      }
    }
  } else {
    for (pid_t pid : worker_pids) {
      if (pid <= 0) continue;
      const std::string path = absl::StrCat(proc_root_, "/", pid, "/statm");
      text = ReadProcFile(path);
      if (absl::IsNotFound(text.status())) continue;  // exited meanwhile: holds nothing
      absl::StatusOr<uint64_t> bytes =
          text.ok() ? ParseStatmRssBytes(*text, page_size_, path) : text.status();
      if (bytes.ok()) {
        rss += *bytes;
      } else {
        WarnOnce(&warned_statm_, bytes.status());
      }
    }
  }
  load.set_workers_rss_bytes(rss);
  // 0 says "nothing measured" (proto): a sample that read no host file.
  if (measured) load.set_sampled_us(absl::ToUnixMicros(clock_->Now()));
  return load;
}

}  // namespace dragon::agent
