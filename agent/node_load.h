// Live telemetry of the agent's host (proto NodeLoad, sent with every
// heartbeat): CPU busy share, memory, load average and the resident memory of
// the agent's Python workers, read from /proc. The parsers are pure so that
// they can be tested on fixture text; NodeLoadSampler reads the files under a
// proc root that a test points at a directory of its own.
#ifndef DRAGON_AGENT_NODE_LOAD_H_
#define DRAGON_AGENT_NODE_LOAD_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "proto/common.pb.h"

namespace dragon::agent {

// CPU time of the whole host since boot, in jiffies (USER_HZ ticks).
struct CpuTimes {
  uint64_t busy = 0;   // user + nice + system + irq + softirq + steal
  uint64_t total = 0;  // busy + idle + iowait
  uint32_t cpus = 0;   // cpuN lines: the online CPUs
};

// The aggregate "cpu " line of /proc/stat and the count of its "cpuN" lines.
// guest and guest_nice are already counted in user and nice, so they are not
// added again. InvalidArgument naming /proc/stat when the aggregate line is
// missing or holds fewer than 4 numbers, or no cpuN line is there.
absl::StatusOr<CpuTimes> ParseProcStat(absl::string_view text);

struct MemInfo {
  uint64_t total_bytes = 0;
  uint64_t available_bytes = 0;
};

// MemTotal and MemAvailable of /proc/meminfo ("kB" is KiB). InvalidArgument
// naming /proc/meminfo and the missing (or malformed) field.
absl::StatusOr<MemInfo> ParseMeminfo(absl::string_view text);

// The 1-minute load average: the first number of /proc/loadavg.
absl::StatusOr<double> ParseLoadavg(absl::string_view text);

// Resident bytes from /proc/PID/statm: its second number (pages) times
// `page_size`. `path` only names the file in the error.
absl::StatusOr<uint64_t> ParseStatmRssBytes(absl::string_view text, uint64_t page_size,
                                            absl::string_view path = "statm");

// Busy share between two readings in 1/1000, rounded, 0..1000. Counters that
// did not advance or went back (a reading from another source) give the
// share of `now` alone, i.e. since boot.
uint32_t BusyPermille(const CpuTimes& before, const CpuTimes& now);

// Samples the host once per heartbeat. Reads a few small files and never
// blocks on anything else; a file that cannot be read or parsed leaves its
// fields 0 and is logged once for the sampler's lifetime (not at every
// heartbeat). Thread-safe (heartbeats come from one thread at a time: the
// pool's, which changes between incarnations).
class NodeLoadSampler {
 public:
  explicit NodeLoadSampler(std::string proc_root = "/proc",
                           const common::Clock* clock = common::RealClock());

  // The CPU share is that since the previous Sample() that could read
  // /proc/stat (the first: since boot). The resident memory of what the
  // agent runs: with `tree_root` (the agent, while executables or MPI jobs
  // run), of every process descended from it or in a process group one of
  // them leads, found in one scan of /proc (each executable's processes, MPI
  // launchers and the ranks they start here, the workers and what they
  // started); else, cheaper, of `worker_pids` alone (the agent's Python
  // workers; one that has exited meanwhile counts 0).
  dragon::v1::NodeLoad Sample(const std::vector<pid_t>& worker_pids, pid_t tree_root = 0);

 private:
  // Logs `status` unless a file of its kind (`*warned`) was logged before.
  void WarnOnce(bool* warned, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string proc_root_;
  const common::Clock* const clock_;
  const uint64_t page_size_;

  absl::Mutex mu_;
  CpuTimes last_cpu_ ABSL_GUARDED_BY(mu_);  // zero: before the first reading
  bool warned_stat_ ABSL_GUARDED_BY(mu_) = false;
  bool warned_meminfo_ ABSL_GUARDED_BY(mu_) = false;
  bool warned_loadavg_ ABSL_GUARDED_BY(mu_) = false;
  bool warned_statm_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_NODE_LOAD_H_
