#include "agent/agent_pool.h"

#include <dirent.h>
#include <signal.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

std::string MiB(uint64_t bytes) { return absl::StrCat(bytes / kMiB, " MiB"); }

}  // namespace

uint64_t DefaultPoolBytes(uint64_t mem_total_bytes, uint64_t fs_bytes) {
  const uint64_t bytes = std::min(mem_total_bytes / 8, fs_bytes / 2);
  return bytes / kMiB * kMiB;
}

absl::StatusOr<uint64_t> PoolBytesFromFlag(const std::string& flag, uint64_t mem_total_bytes,
                                           const absl::StatusOr<uint64_t>& fs_bytes,
                                           const std::string& dir) {
  const std::string text(absl::StripAsciiWhitespace(flag));
  int64_t mb = -1;
  if (text.empty() || text == "auto") {
    if (!fs_bytes.ok()) return fs_bytes.status();
    return DefaultPoolBytes(mem_total_bytes, *fs_bytes);
  }
  if (!absl::SimpleAtoi(text, &mb)) {
    return absl::InvalidArgumentError(absl::StrCat(
        common::kShmPoolSizeOption, " must be a whole number of MiB (0: no pool; auto: the "
        "default), not '", flag, "'"));
  }
  if (mb < 0) {
    return absl::InvalidArgumentError(absl::StrCat(common::kShmPoolSizeOption, " ", mb,
                                                   " is negative (0: no pool)"));
  }
  if (mb == 0) return 0;
  if (!fs_bytes.ok()) return fs_bytes.status();
  const uint64_t mib = static_cast<uint64_t>(mb);
  if (mib > *fs_bytes / kMiB) {
    return absl::InvalidArgumentError(absl::StrCat(
        common::kShmPoolSizeOption, " ", mib, " is larger than the file system of --shm-dir ",
        dir, " (", MiB(*fs_bytes), ")"));
  }
  return mib * kMiB;
}

std::string PoolFileName(uid_t uid, const std::string& node_id, pid_t pid) {
  std::string node = node_id;
  for (char& c : node) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      c = '_';
    }
  }
  return absl::StrCat(kAgentPoolPrefix, uid, "-", node, "-", pid);
}

absl::StatusOr<uint64_t> MemTotalBytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, "MemTotal:")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, "kB");
    uint64_t kb = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kb)) return kb * 1024;
    break;
  }
  return absl::InternalError(
      absl::StrCat("cannot read MemTotal from /proc/meminfo (for the default of ",
                   common::kShmPoolSizeOption, "; give it explicitly)"));
}

absl::StatusOr<uint64_t> FileSystemBytes(const std::string& dir) {
  struct statvfs fs {};
  if (statvfs(dir.c_str(), &fs) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shm-dir ", dir, ": ", std::strerror(errno)));
  }
  return static_cast<uint64_t>(fs.f_blocks) * static_cast<uint64_t>(fs.f_frsize);
}

bool ProcessExists(pid_t pid) { return !(kill(pid, 0) == -1 && errno == ESRCH); }

PoolJanitor::PoolJanitor(common::ShmPool* pool, const common::Clock* clock, ProcessAlive alive,
                         absl::Duration period)
    : pool_(pool), clock_(clock), alive_(std::move(alive)), period_(period) {
  free_bytes_ = pool_->capacity_bytes();
  Measure();
}

uint64_t PoolJanitor::Tick() {
  const absl::Time now = clock_->Now();
  if (now - last_sweep_ < period_) return 0;
  last_sweep_ = now;
  return Sweep();
}

uint64_t PoolJanitor::Sweep() {
  uint64_t freed = 0;
  absl::StatusOr<std::vector<pid_t>> owners = pool_->Owners();
  if (!owners.ok()) {
    spdlog::warn("shared-memory pool {}: cannot list the owners of its blocks: {}", pool_->path(),
                 owners.status().ToString());
  } else {
    const pid_t self = getpid();
    for (pid_t owner : *owners) {
      if (owner <= 0 || owner == self || alive_(owner)) continue;
      freed += ReclaimDead(owner);
    }
  }
  Measure();
  return freed;
}

uint64_t PoolJanitor::ReclaimDead(pid_t pid) {
  absl::StatusOr<uint64_t> freed = pool_->ReclaimOwner(pid);
  if (!freed.ok()) {
    spdlog::warn("shared-memory pool {}: cannot reclaim the blocks of dead process {}: {}",
                 pool_->path(), pid, freed.status().ToString());
    return 0;
  }
  if (*freed > 0) {
    spdlog::info("reclaimed {} bytes of dead process {} from the shared-memory pool", *freed, pid);
    reclaimed_bytes_ += *freed;
  }
  return *freed;
}

void PoolJanitor::Measure() {
  absl::StatusOr<common::ShmPoolStats> stats = pool_->Stats();
  if (!stats.ok()) {
    spdlog::warn("shared-memory pool {}: {}", pool_->path(), stats.status().ToString());
    return;
  }
  free_bytes_ = stats->free_bytes;
  blocks_ = stats->blocks_in_use;
}

std::vector<std::string> PredecessorPools(const std::string& dir, uid_t uid,
                                          const std::string& node_id) {
  // PoolFileName with the pid cut off: exactly this node's names, not those
  // of a node whose id merely starts with this one ("n1" and "n1-b2").
  std::string prefix = PoolFileName(uid, node_id, 0);
  prefix.pop_back();
  std::vector<std::string> paths;
  DIR* listing = opendir(dir.c_str());
  if (listing == nullptr) return paths;
  while (dirent* entry = readdir(listing)) {
    absl::string_view name = entry->d_name;
    uint32_t pid = 0;
    if (absl::ConsumePrefix(&name, prefix) && !name.empty() &&
        std::all_of(name.begin(), name.end(), absl::ascii_isdigit) &&
        absl::SimpleAtoi(name, &pid)) {
      paths.push_back(absl::StrCat(dir, "/", entry->d_name));
    }
  }
  closedir(listing);
  std::sort(paths.begin(), paths.end());
  return paths;
}

namespace {

// The pool of this node's previous agent (killed, and started again by its
// launcher), if one is left and has the size asked for: its blocks of live
// processes (a client's task arguments; tasks the head runs again) stay valid.
std::unique_ptr<common::ShmPool> AdoptPredecessor(const AgentPoolOptions& options) {
  for (const std::string& path : PredecessorPools(options.dir, geteuid(), options.node_id)) {
    absl::StatusOr<std::unique_ptr<common::ShmPool>> pool = common::ShmPool::Adopt(path);
    if (!pool.ok()) continue;  // its agent lives, or it is not a pool: RemoveStale decides
    const uint64_t wanted = options.size_bytes / 4096 * 4096;
    if ((*pool)->capacity_bytes() != wanted) {
      spdlog::info("not adopting shared-memory pool {} of a previous agent: {} where {} is asked "
                   "for; it is removed",
                   path, MiB((*pool)->capacity_bytes()), MiB(wanted));
      continue;  // ours now: its destructor removes the file
    }
    return *std::move(pool);
  }
  return nullptr;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AgentPool>> AgentPool::Start(const AgentPoolOptions& options) {
  std::unique_ptr<common::ShmPool> adopted = AdoptPredecessor(options);
  const int removed = common::ShmPool::RemoveStale(options.dir, kAgentPoolPrefix);
  spdlog::info("removed {} stale shared-memory pool(s) of dead agents from {}", removed,
               options.dir);
  if (adopted != nullptr) {
    std::unique_ptr<AgentPool> agent_pool(new AgentPool(std::move(adopted), options));
    spdlog::info("shared-memory pool {}: {}, adopted from this node's previous agent (its blocks "
                 "of live processes are kept, those of dead ones freed)",
                 agent_pool->path(), MiB(agent_pool->capacity_bytes()));
    agent_pool->janitor()->Sweep();
    return agent_pool;
  }
  common::ShmPoolOptions popts;
  popts.dir = options.dir;
  popts.name = PoolFileName(geteuid(), options.node_id, getpid());
  popts.size_bytes = options.size_bytes;
  popts.reserve = false;  // costs memory only for the blocks in use
  absl::StatusOr<std::unique_ptr<common::ShmPool>> pool = common::ShmPool::Create(popts);
  if (!pool.ok()) return pool.status();
  std::unique_ptr<AgentPool> agent_pool(new AgentPool(*std::move(pool), options));
  spdlog::info("shared-memory pool {}: {} (lazily backed)", agent_pool->path(),
               MiB(agent_pool->capacity_bytes()));
  return agent_pool;
}

AgentPool::AgentPool(std::unique_ptr<common::ShmPool> pool, const AgentPoolOptions& options)
    : pool_(std::move(pool)),
      janitor_(std::make_unique<PoolJanitor>(pool_.get(), options.clock, options.alive,
                                             options.janitor_period)) {
  if (options.janitor_thread) {
    thread_ = std::thread([this, period = options.janitor_period] { JanitorLoop(period); });
  }
}

AgentPool::~AgentPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  const std::string path = pool_->path();
  janitor_.reset();
  pool_.reset();  // the creator's destructor removes the file
  spdlog::info("shared-memory pool {} removed", path);
}

void AgentPool::JanitorLoop(absl::Duration period) {
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    mu_.AwaitWithTimeout(absl::Condition(&stop_), period);
    if (stop_) break;
    mu_.Unlock();
    janitor_->Sweep();  // this loop keeps the time; Tick() is for loops with a clock
    mu_.Lock();
  }
}

}  // namespace dragon::agent
