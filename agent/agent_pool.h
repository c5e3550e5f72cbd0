// The node's shared-memory pool as dragon-agent owns it (common/shm_pool.h):
// its size from --shm-pool-mb/--shm-dir, its file name, the removal of pools
// that crashed agents left behind, and the janitor that gives the blocks of
// dead processes back. Clients and workers on the node attach the pool by the
// path the agent registers (Register.shm_pool_path).
//
// The pool is lazily backed (ShmPoolOptions::reserve = false): its file costs
// memory only for the blocks in use, so several agents may share a machine.
// It is removed when the agent exits (the creator's ShmPool destructor); a
// kill -9'd agent's pool goes at the next agent start on that directory.
#ifndef DRAGON_AGENT_AGENT_POOL_H_
#define DRAGON_AGENT_AGENT_POOL_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/shm_pool.h"

namespace dragon::agent {

// Every agent's pool file starts with this (RemoveStale's prefix).
inline constexpr char kAgentPoolPrefix[] = "dragon-pool-";

// The default pool: 1/8 of the node's memory, at most half of the file
// system the pool lives in, rounded down to whole MiB.
uint64_t DefaultPoolBytes(uint64_t mem_total_bytes, uint64_t fs_bytes);

// The pool's size in bytes from --shm-pool-mb's text ("auto" or "": the
// default; "0": no pool, whatever --shm-dir is). InvalidArgument naming the
// flag for what is not a whole number of MiB, a negative number, or more than
// the file system of --shm-dir (`dir`, of `fs_bytes`) holds; `fs_bytes`'s
// error (FileSystemBytes) when a pool is wanted in a directory that is not.
absl::StatusOr<uint64_t> PoolBytesFromFlag(const std::string& flag, uint64_t mem_total_bytes,
                                           const absl::StatusOr<uint64_t>& fs_bytes,
                                           const std::string& dir);

// "dragon-pool-<uid>-<node id>-<pid>", the node id's characters other than
// letters, digits, '.', '_' and '-' replaced by '_' (never a '/').
std::string PoolFileName(uid_t uid, const std::string& node_id, pid_t pid);

// MemTotal of /proc/meminfo.
absl::StatusOr<uint64_t> MemTotalBytes();
// The size of the file system holding `dir` (statvfs); errors name --shm-dir.
absl::StatusOr<uint64_t> FileSystemBytes(const std::string& dir);

// Whether a process exists: false only when kill(pid, 0) fails with ESRCH.
using ProcessAlive = std::function<bool(pid_t)>;
bool ProcessExists(pid_t pid);

// The pool's use, as the janitor last measured it (for heartbeats, which must
// never wait for the pool's lock).
struct PoolUsage {
  uint64_t free_bytes = 0;
  uint64_t blocks = 0;
};

// Once every `period` (on the injected clock): frees the blocks of owners
// that died (ReclaimOwner) and measures the pool. Not thread-safe except
// usage() and ReclaimDead(), which may be called from any thread.
class PoolJanitor {
 public:
  PoolJanitor(common::ShmPool* pool, const common::Clock* clock, ProcessAlive alive,
              absl::Duration period = absl::Seconds(1));

  // Sweep() if `period` has passed since the last sweep (or there was none);
  // returns the bytes reclaimed.
  uint64_t Tick();
  // Reclaims the blocks of every owner that is not alive (never this
  // process's), logs each, and refreshes usage(). Returns the bytes freed.
  uint64_t Sweep();
  // A process the agent saw exit (one of its workers): its blocks now.
  uint64_t ReclaimDead(pid_t pid);

  PoolUsage usage() const { return {free_bytes_.load(), blocks_.load()}; }
  uint64_t reclaimed_bytes() const { return reclaimed_bytes_.load(); }

 private:
  void Measure();

  common::ShmPool* pool_;
  const common::Clock* clock_;
  ProcessAlive alive_;
  absl::Duration period_;
  absl::Time last_sweep_ = absl::InfinitePast();
  std::atomic<uint64_t> free_bytes_{0};
  std::atomic<uint64_t> blocks_{0};
  std::atomic<uint64_t> reclaimed_bytes_{0};
};

// The pool files in `dir` of earlier agents of `node_id` (any pid), sorted.
std::vector<std::string> PredecessorPools(const std::string& dir, uid_t uid,
                                          const std::string& node_id);

struct AgentPoolOptions {
  std::string dir = "/dev/shm";
  std::string node_id;
  uint64_t size_bytes = 0;
  const common::Clock* clock = common::RealClock();
  ProcessAlive alive = ProcessExists;
  absl::Duration janitor_period = absl::Seconds(1);
  // Run the janitor on a thread of its own (tests call janitor()->Tick()).
  bool janitor_thread = true;
};

class AgentPool {
 public:
  // Adopts the pool of this node's previous agent if it died leaving one of
  // the size asked for (ShmPool::Adopt), else creates one (lazily backed);
  // removes the pools of other dead agents in `dir` (logging how many), and
  // starts the janitor.
  static absl::StatusOr<std::unique_ptr<AgentPool>> Start(const AgentPoolOptions& options);

  // Stops the janitor and removes the pool's file.
  ~AgentPool();
  AgentPool(const AgentPool&) = delete;
  AgentPool& operator=(const AgentPool&) = delete;

  const std::string& path() const { return pool_->path(); }
  uint64_t capacity_bytes() const { return pool_->capacity_bytes(); }
  PoolUsage usage() const { return janitor_->usage(); }
  PoolJanitor* janitor() { return janitor_.get(); }
  common::ShmPool* pool() { return pool_.get(); }

 private:
  AgentPool(std::unique_ptr<common::ShmPool> pool, const AgentPoolOptions& options);
  void JanitorLoop(absl::Duration period);

  std::unique_ptr<common::ShmPool> pool_;
  std::unique_ptr<PoolJanitor> janitor_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_AGENT_POOL_H_
