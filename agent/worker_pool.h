// The agent's pool of pre-forked Python workers: one thread polls every
// worker's pipes plus an eventfd (woken by SubmitTasks/CancelTasks/Shutdown),
// feeds PoolState with what the workers say, and carries out what PoolState
// decides (start, send, kill). EXECUTABLE tasks are run by an
// ExecutableRunner on the same thread (their output pipes are polled with
// the workers'), each occupying one of the pool's slots.
#ifndef DRAGON_AGENT_WORKER_POOL_H_
#define DRAGON_AGENT_WORKER_POOL_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agent/executable_runner.h"
#include "agent/mpi_launcher.h"
#include "agent/interfaces.h"
#include "agent/pool_state.h"
#include "agent/task_env.h"
#include "agent/task_logs.h"
#include "agent/worker_process.h"
#include "common/framing.h"

namespace dragon::agent {

struct WorkerPoolOptions {
  std::string node_id;
  std::string run_dir;
  // The run's id (Registered.run_id): it marks the processes of MPI jobs
  // (DRAGON_MPI_TASK), also on the other nodes of a gang.
  std::string run_id;
  std::string host;  // this host as MPI placements name it; "" = the host name
  int workers = 1;
  // The node's cores as registered (what grants index; PoolOptions::cores).
  int cores = 0;
  // CPU numbers, GPUs and the MPI launcher, for placed tasks' affinity and
  // environment (agent/task_env.h).
  NodeEnv node_env;
  // e.g. {"/usr/bin/python3", "-m", "dragon_parsl.worker"}
  std::vector<std::string> worker_argv;
  // Largest result a task may return (the head's payload limit, told at
  // registration). Workers are told it ($DRAGON_MAX_RESULT_BYTES) and send a
  // RESULT_TOO_LARGE frame instead of a larger result; a worker that sends
  // one anyway breaks the protocol and is killed.
  uint64_t max_result_bytes = 256ull << 20;
  // Shutdown: SIGTERM, then SIGKILL after this long.
  int64_t term_grace_ms = 2000;
  // See PoolOptions::ready_timeout_us.
  int64_t ready_timeout_us = 120'000'000;
};

class WorkerPool : public TaskHandler {
 public:
  WorkerPool(WorkerPoolOptions options, TaskEventSink* sink);
  ~WorkerPool() override;  // Shutdown()

  // Creates the worker log directory and starts the pool thread, which
  // forks the workers. Returns once they are started, not ready.
  absl::Status Start();

  // TaskHandler; thread-safe.
  void SubmitTasks(std::vector<v1::TaskAssignment> tasks) override;
  void CancelTasks(std::vector<uint64_t> task_ids, std::string reason) override;
  void ReclaimTasks(std::vector<uint64_t> task_ids) override;
  void Ping(uint64_t seq) override;
  void TaskIO(std::vector<v1::TaskIOFrame> frames) override;
  void TaskLogs(v1::TaskLogsQuery query) override;
  int BusyWorkers() const override { return busy_.load(std::memory_order_relaxed); }
  int QueuedTasks() const override { return queued_.load(std::memory_order_relaxed); }

  int ReadyWorkers() const { return ready_.load(std::memory_order_relaxed); }
  // Pids of the Python workers started and not yet reaped (not executables
  // or MPI jobs), for the heartbeat's NodeLoad. Thread-safe; as of the pool
  // thread's last start or reap of a worker.
  std::vector<pid_t> WorkerPids() const;
  // Whether executable tasks or MPI jobs run: their processes are none of the
  // workers, so the heartbeat counts the memory of the agent's whole process
  // tree then. Thread-safe; as of the pool thread's last turn.
  bool RunsExecutables() const { return runs_executables_.load(std::memory_order_relaxed); }
  int slots() const { return options_.workers; }
  std::string WorkerLogPath(int slot) const;

  // Stops every worker (EOF + SIGTERM, SIGKILL after term_grace_ms), reaps
  // them and joins the pool thread. Idempotent, thread-safe.
  void Shutdown();

 private:
  class Control;  // PoolState's WorkerControl over real processes (worker_pool_control.h)
  static int64_t NowUs();

  struct Worker {
    explicit Worker(std::unique_ptr<WorkerProcess> p, uint32_t max_frame)
        : proc(std::move(p)), decoder(max_frame) {}
    std::unique_ptr<WorkerProcess> proc;
    common::FrameDecoder decoder;
    std::string out;      // frames not yet written to the worker
    size_t out_off = 0;   // bytes of `out` already written
    int64_t eof_us = 0;   // when its output pipe closed; 0 = still open
  };

  struct Command {
    std::vector<v1::TaskAssignment> tasks;  // submit, or
    std::vector<uint64_t> cancel_ids;       // cancel with
    std::string reason;
    std::vector<uint64_t> reclaim_ids;      // give back if not started, or
    uint64_t ping_seq = 0;                  // answer this ping
    std::vector<v1::TaskIOFrame> io;        // MPI jobs' TaskIO frames
    std::vector<v1::TaskLogsQuery> logs;    // dragonctl logs
  };
  void Push(Command command);

  void Loop();
  void RunCommands();
  void ReadFrom(int slot);
  void WriteTo(int slot);
  void CheckExits(bool poll_all);
  // Copies the pids in workers_ for WorkerPids(); pool thread, after any change.
  void PublishWorkerPids();
  void StopAll();
  void Wake();

  WorkerPoolOptions options_;
  TaskEventSink* sink_;
  std::unique_ptr<Control> control_;
  std::unique_ptr<PoolState> state_;
  // Indexed by slot; touched only by the pool thread.
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<char> read_buf_;
  std::unique_ptr<ExecutableRunner> runner_;  // pool thread only
  // CPU numbers plain executables start on (empty: all); pool thread only.
  std::vector<int> plain_cpus_;
  // MPI jobs led here (EXECUTABLE tasks with grant.mpi); pool thread only.
  std::unique_ptr<MpiLauncher> mpi_;
  std::string mpi_config_error_;  // why no MPI job can be launched here ("" = they can)
  // Hold-only shares of gangs led elsewhere: task id -> DRAGON_MPI_TASK marker;
  // when the hold ends (the head cancels it) the job's processes here are killed.
  std::map<uint64_t, std::string> holds_;
  TaskLogIndex logs_;  // what dragonctl logs reads
  void CollectExecutables();

  int event_fd_ = -1;
  std::thread thread_;
  std::atomic<int> busy_{0};
  std::atomic<int> ready_{0};
  std::atomic<int> queued_{0};
  std::atomic<bool> runs_executables_{false};

  mutable absl::Mutex pids_mu_;  // apart from mu_: a heartbeat never waits for the inbox
  std::vector<pid_t> worker_pids_ ABSL_GUARDED_BY(pids_mu_);

  absl::Mutex mu_;
  std::vector<Command> inbox_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status start_status_ ABSL_GUARDED_BY(mu_);
  bool start_done_ ABSL_GUARDED_BY(mu_) = false;
  bool joined_ = false;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_WORKER_POOL_H_
