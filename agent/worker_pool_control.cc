#include "agent/worker_pool_control.h"

#include <signal.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/task_env.h"
#include "common/framing.h"
#include "common/grant_files.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {

absl::StatusOr<int> WorkerPool::Control::StartWorker(int slot) {
  const WorkerPoolOptions& o = pool_->options_;
  WorkerSpec spec;
  spec.argv = o.worker_argv;
  spec.log_path = pool_->WorkerLogPath(slot);
  spec.env = {{"DRAGON_NODE_ID", o.node_id},
              {"DRAGON_WORKER_SLOT", absl::StrCat(slot)},
              {"DRAGON_RUN_DIR", o.run_dir},
              {"DRAGON_MAX_RESULT_BYTES", absl::StrCat(o.max_result_bytes)}};
  // Output of a worker that is then SIGKILLed is otherwise lost in
  // Python's buffer: exactly the output needed to understand why.
  if (getenv("PYTHONUNBUFFERED") == nullptr) spec.env.emplace_back("PYTHONUNBUFFERED", "1");
  // On a GPU node a task sees only the GPUs granted to it (RUN_ENV frames).
  for (auto& kv : WorkerBaseEnvironment(o.node_env)) spec.env.push_back(std::move(kv));
  absl::StatusOr<std::unique_ptr<WorkerProcess>> proc = WorkerProcess::Start(spec);
  if (!proc.ok()) return proc.status();
  const int pid = (*proc)->pid();
  pool_->logs_.WorkerStarted(slot, spec.log_path);
  // Headroom over the limit: the worker checks the limit on the result's
  // pickled size; a frame past this is a worker ignoring it.
  const uint64_t max_frame = std::min<uint64_t>(o.max_result_bytes + (1u << 20), UINT32_MAX);
  pool_->workers_[slot] =
      std::make_unique<Worker>(std::move(*proc), static_cast<uint32_t>(max_frame));
  pool_->PublishWorkerPids();
  spdlog::debug("slot {}: worker pid {} started", slot, pid);
  return pid;
}

void WorkerPool::Control::SendTask(int slot, v1::TaskAssignment task) {
  Worker* w = pool_->workers_[slot].get();
  if (w == nullptr || w->proc->to_worker_fd() < 0) return;  // dying; its exit fails the task
  pool_->logs_.PythonStarted(task.task_id(), slot);
  // A grant's GPUs and MPI placement: set by the worker for this task only.
  EnvList env = TaskEnvironment(task, pool_->options_.node_env, /*plain_gpu_hiding=*/false);
  if (env.empty()) {
    common::AppendRunFrame(&w->out, task.task_id(), task.cwd(), task.payload());
  } else {
    common::AppendRunEnvFrame(&w->out, task.task_id(), env, task.cwd(), task.payload());
  }
  pool_->WriteTo(slot);  // most frames fit the pipe: no extra poll round
}

void WorkerPool::Control::KillWorker(int slot) {
  Worker* w = pool_->workers_[slot].get();
  if (w == nullptr) return;
  // The worker and whatever its task started (a bash_app's processes, an
  // mpiexec): nothing of the task may outlive it.
  if (!w->proc->reaped()) KillTree(w->proc->pid());
  absl::Status s = w->proc->Signal(SIGKILL);
  if (!s.ok()) spdlog::error("slot {}: {}", slot, std::string(s.message()));
  // Nothing it says from now on matters, and its exit is found by reaping.
  w->proc->CloseToWorker();
  w->proc->CloseFromWorker();
  if (w->eof_us == 0) w->eof_us = NowUs();
}

absl::StatusOr<int> WorkerPool::Control::StartExecutable(const v1::TaskAssignment& task) {
  if (MpiLauncher::IsMpiJob(task)) {
    if (pool_->mpi_ == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("this agent cannot launch MPI jobs: ", pool_->mpi_config_error_));
    }
    return pool_->mpi_->Start(task);
  }
  const NodeEnv& node = pool_->options_.node_env;
  const std::vector<int> cpus = task.grant().cpus_size() > 0
                                    ? GrantedCpus(task.grant(), node.cpu_ids)
                                    : pool_->plain_cpus_;
  return pool_->runner_->Start(task, cpus, TaskEnvironment(task, node, /*plain_gpu_hiding=*/true));
}

void WorkerPool::Control::PinWorker(int slot, const std::vector<uint32_t>& cpus) {
  Worker* w = pool_->workers_[slot].get();
  if (w == nullptr || w->proc->reaped()) return;
  const std::vector<int>& all = pool_->options_.node_env.cpu_ids;
  std::vector<int> numbers;
  for (uint32_t i : cpus) {
    if (i < all.size()) numbers.push_back(all[i]);
  }
  if (numbers.empty()) numbers = all;
  if (numbers.empty()) return;
  absl::Status s = SetProcessAffinity(w->proc->pid(), numbers);
  if (!s.ok()) spdlog::warn("slot {}: {}", slot, std::string(s.message()));
}

void WorkerPool::Control::SetPlainCpus(const std::vector<uint32_t>& cpus) {
  const std::vector<int>& all = pool_->options_.node_env.cpu_ids;
  pool_->plain_cpus_.clear();
  for (uint32_t i : cpus) {
    if (i < all.size()) pool_->plain_cpus_.push_back(all[i]);
  }
}

void WorkerPool::Control::MpiShareHeld(uint64_t task_id, const std::vector<uint32_t>& cpus) {
  const WorkerPoolOptions& o = pool_->options_;
  std::vector<int> numbers;
  for (uint32_t i : cpus) {
    if (i < o.node_env.cpu_ids.size()) numbers.push_back(o.node_env.cpu_ids[i]);
  }
  absl::Status s = common::WriteGrantFile(o.node_env.run_id, o.node_id, task_id, numbers);
  if (!s.ok()) spdlog::warn("task {}: its ranks here will not be bound: {}", task_id, std::string(s.message()));
}

void WorkerPool::Control::MpiShareReleased(uint64_t task_id) {
  common::RemoveGrantFile(pool_->options_.node_env.run_id, pool_->options_.node_id, task_id);
}

void WorkerPool::Control::KillExecutable(uint64_t task_id) {
  if (pool_->mpi_ != nullptr && pool_->mpi_->Owns(task_id)) {
    pool_->mpi_->Kill(task_id);
    return;
  }
  pool_->runner_->Kill(task_id);
}

}  // namespace dragon::agent
