// The cores of placed tasks (grant.cpus) and of hold-only MPI shares on this
// node: how many they hold (queued ones count from their arrival, so that
// no plain task starts on cores a placed task waits for), which CPUs the
// running ones have taken, and which are left for plain tasks. Bookkeeping
// only: PoolState tells the process layer what changed (pinning, MPI grant
// files).
#ifndef DRAGON_AGENT_PLACED_CORES_H_
#define DRAGON_AGENT_PLACED_CORES_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "proto/agent.pb.h"

namespace dragon::agent {

class PlacedCores {
 public:
  // A placed task's (or a hold's) cores, from its arrival to its end.
  struct Entry {
    std::vector<uint32_t> cpus;
    bool running = false;  // running or held: its CPUs are taken
    bool mpi = false;      // an MPI task's share (grant.mpi)
  };

  explicit PlacedCores(int cores);

  bool Has(uint64_t task_id) const { return placed_.count(task_id) != 0; }
  bool IsHold(uint64_t task_id) const { return holds_.count(task_id) != 0; }
  // The CPU indices of a placed task (none if it is not placed).
  const std::vector<uint32_t>& Cpus(uint64_t task_id) const;

  // A placed task arrives (queued): its cores count from now.
  void Arrive(const v1::TaskAssignment& task);
  // It starts: its CPUs are taken. nullptr if it is not placed or already runs.
  const Entry* Start(uint64_t task_id);
  // A hold-only share: its CPUs are taken at once. nullptr for a repeat.
  const Entry* Hold(const v1::TaskAssignment& task);
  // It ended, whichever way (queued, running, held); what it held, if anything.
  std::optional<Entry> End(uint64_t task_id);

  // After CPUs were taken or freed: the CPUs no running placed task holds
  // (empty = all of them: nothing placed runs, or it all is), under a new
  // version number.
  const std::vector<uint32_t>& RecomputePlainCpus();
  const std::vector<uint32_t>& plain_cpus() const { return plain_cpus_; }
  int64_t plain_version() const { return plain_version_; }  // 0: never pinned

  int held_all() const { return held_all_; }          // cores of every entry
  int held_running() const { return held_running_; }  // those running or held
  size_t queued() const { return queued_; }           // placed tasks not started yet

 private:
  void Take(const Entry& entry);

  std::unordered_map<uint64_t, Entry> placed_;  // by task id
  std::unordered_set<uint64_t> holds_;
  int held_all_ = 0;
  int held_running_ = 0;
  size_t queued_ = 0;
  std::vector<bool> cpu_taken_;       // by CPU index: a running placed task or a hold has it
  std::vector<uint32_t> plain_cpus_;  // the others; empty = all (nothing placed runs)
  int64_t plain_version_ = 0;         // 0: plain tasks run on every CPU, unpinned
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_PLACED_CORES_H_
