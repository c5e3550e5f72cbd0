#include "agent/node_resources.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dragon::agent {
namespace {

std::string ReadFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return std::string(absl::StripAsciiWhitespace(line));
}

// GPUs nvidia-smi lists ("GPU 0: ..." per line), when it is installed.
std::vector<std::string> NvidiaSmiGpus() {
  std::vector<std::string> ids;
  FILE* p = popen("nvidia-smi -L 2>/dev/null", "r");
  if (p == nullptr) return ids;
  char line[512];
  int n = 0;
  while (fgets(line, sizeof(line), p) != nullptr) {
    if (absl::StartsWith(line, "GPU ")) ids.push_back(absl::StrCat(n++));
  }
  if (pclose(p) != 0) ids.clear();  // not installed, or no driver: no GPUs
  return ids;
}

}  // namespace

uint32_t CapCores(uint32_t affinity, const char* slurm_cpus_on_node) {
  uint32_t cores = std::max(1u, affinity);
  uint32_t cap = 0;
  if (slurm_cpus_on_node != nullptr &&
      absl::SimpleAtoi(absl::StripAsciiWhitespace(slurm_cpus_on_node), &cap) && cap > 0) {
    cores = std::min(cores, cap);
  }
  return cores;
}

uint32_t UsableCores() {
  cpu_set_t set;
  const uint32_t affinity = sched_getaffinity(0, sizeof(set), &set) == 0
                                ? static_cast<uint32_t>(CPU_COUNT(&set))
                                : std::thread::hardware_concurrency();
  return CapCores(affinity, std::getenv("SLURM_CPUS_ON_NODE"));
}

uint64_t UsableMemoryBytes() {
  const uint64_t physical = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                            static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  // cgroup v2: "0::/path" in /proc/self/cgroup, the limit in memory.max.
  const std::string cgroup = ReadFirstLine("/proc/self/cgroup");
  if (!absl::StartsWith(cgroup, "0::")) return physical;
  const std::string max = ReadFirstLine(absl::StrCat("/sys/fs/cgroup", cgroup.substr(3), "/memory.max"));
  uint64_t limit = 0;
  if (absl::SimpleAtoi(max, &limit) && limit > 0) return std::min(physical, limit);
  return physical;  // "max" or unreadable: no cgroup limit
}

absl::StatusOr<std::vector<std::string>> ParseDeviceList(const std::string& list,
                                                         const std::string& origin) {
  std::vector<std::string> ids;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, " '", list, "' has an empty entry; expected ids like 0,1,2"));
    }
    ids.emplace_back(part);
  }
  return ids;
}

absl::StatusOr<std::vector<std::string>> DetectGpus(const std::string& flag) {
  if (flag == "none") return std::vector<std::string>{};
  if (!flag.empty()) return ParseDeviceList(flag, "--gpus");
  for (const char* name : {"CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"}) {
    const char* value = std::getenv(name);
    if (value == nullptr) continue;
    const std::string list = value;
    // Set but empty, or CUDA's "no devices" spellings: the job has none.
    if (list.empty() || list == "NoDevFiles" || list == "-1") return std::vector<std::string>{};
    return ParseDeviceList(list, absl::StrCat("$", name));
  }
  return NvidiaSmiGpus();
}

int64_t AllocationEndMicros(int64_t flag_seconds, const char* slurm_job_end_time) {
  int64_t end_s = flag_seconds > 0 ? flag_seconds : 0;
  int64_t slurm_s = 0;
  if (slurm_job_end_time != nullptr &&
      absl::SimpleAtoi(absl::StripAsciiWhitespace(slurm_job_end_time), &slurm_s) && slurm_s > 0) {
    end_s = end_s == 0 ? slurm_s : std::min(end_s, slurm_s);
  }
  return end_s * 1'000'000;
}

std::string BlockIdProblem(const std::string& block_id) {
  if (block_id.empty() || block_id.size() > 64) {
    return absl::StrCat("--block-id must be 1..64 characters, not ", block_id.size());
  }
  for (char c : block_id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::StrCat("--block-id '", block_id,
                          "' may hold only letters, digits, '.', '_' and '-'");
    }
  }
  return "";
}

std::string DefaultNodeId(const std::string& host, const std::string& block_id) {
  return block_id.empty() ? host : absl::StrCat(host, "-b", block_id);
}

}  // namespace dragon::agent
