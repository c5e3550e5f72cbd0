// PoolState's hands on real processes (WorkerControl): starting, feeding,
// pinning and killing Python workers, and starting executables and MPI jobs.
// A part of WorkerPool (it reaches the pool's workers, logs and launchers),
// kept apart from the pool's poll loop; private to worker_pool.cc.
#ifndef DRAGON_AGENT_WORKER_POOL_CONTROL_H_
#define DRAGON_AGENT_WORKER_POOL_CONTROL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/pool_state.h"
#include "agent/process_tree.h"
#include "agent/worker_pool.h"

namespace dragon::agent {

class WorkerPool::Control : public WorkerControl {
 public:
  explicit Control(WorkerPool* pool) : pool_(pool) {}

  absl::StatusOr<int> StartWorker(int slot) override;
  void SendTask(int slot, v1::TaskAssignment task) override;
  void KillWorker(int slot) override;
  std::string WorkerLogPath(int slot) const override { return pool_->WorkerLogPath(slot); }
  absl::StatusOr<int> StartExecutable(const v1::TaskAssignment& task) override;
  void PinWorker(int slot, const std::vector<uint32_t>& cpus) override;
  void SetPlainCpus(const std::vector<uint32_t>& cpus) override;
  uint64_t TreeMemoryBytes(int pid) override { return TreeRssBytes(pid); }
  void MpiShareHeld(uint64_t task_id, const std::vector<uint32_t>& cpus) override;
  void MpiShareReleased(uint64_t task_id) override;
  void KillExecutable(uint64_t task_id) override;

 private:
  WorkerPool* pool_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_WORKER_POOL_CONTROL_H_
