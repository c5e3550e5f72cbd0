// The worker pool's bookkeeping, without processes or fds: which slot runs
// which task, the queue of tasks waiting for a ready worker, cancellation,
// worker death and restarts. WorkerPool drives it from real processes; the
// unit test drives it from a scripted WorkerControl.
//
// Not thread-safe: owned and called by one thread (the pool thread).
#ifndef DRAGON_AGENT_POOL_STATE_H_
#define DRAGON_AGENT_POOL_STATE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/held_reports.h"
#include "agent/interfaces.h"
#include "agent/placed_cores.h"
#include "agent/task_limits.h"
#include "proto/common.pb.h"

namespace dragon::agent {

// What PoolState asks of the process layer.
class WorkerControl {
 public:
  virtual ~WorkerControl() = default;
  // Starts a worker in `slot` and returns its pid. It may take tasks only
  // after PoolState::OnReady(slot).
  virtual absl::StatusOr<int> StartWorker(int slot) = 0;
  // Hands the task to the ready, idle worker in `slot`. A delivery failure
  // surfaces later as that worker's exit.
  virtual void SendTask(int slot, v1::TaskAssignment task) = 0;
  // SIGKILLs the worker in `slot`; its exit is still reported via OnWorkerExit.
  virtual void KillWorker(int slot) = 0;
  // The worker's stdout/stderr file, named in errors about failed starts.
  virtual std::string WorkerLogPath(int slot) const = 0;
  // Starts an EXECUTABLE task (payload = ExecutableSpec) without a worker and
  // returns its pid; its end comes back via PoolState::OnExecutableDone. An
  // error means it could not be started (the text names argv[0] and why).
  virtual absl::StatusOr<int> StartExecutable(const v1::TaskAssignment& task) {
    return absl::UnimplementedError("this agent cannot run executables");
  }
  // SIGKILLs a running executable's process group; its end is still reported.
  virtual void KillExecutable(uint64_t task_id) {}
  // Sets the CPU affinity of the worker in `slot` (every thread) to these
  // CPU indices of the node (indices into the agent's own CPU set; empty:
  // all of them). Before a placed task: its grant; before a plain task: the
  // CPUs no placed task holds.
  virtual void PinWorker(int slot, const std::vector<uint32_t>& cpus) {}
  // The CPU indices plain executables start on from now on (empty: all).
  virtual void SetPlainCpus(const std::vector<uint32_t>& cpus) {}
  // Resident memory (bytes) of the process tree of `pid` (the memory watchdog).
  virtual uint64_t TreeMemoryBytes(int pid) { return 0; }
  // This node's share of an MPI task (leader or hold-only member) is held
  // from now on, on these CPU indices / no longer (dragon-mpi-bind reads it).
  virtual void MpiShareHeld(uint64_t task_id, const std::vector<uint32_t>& cpus) {}
  virtual void MpiShareReleased(uint64_t task_id) {}
};

struct PoolOptions {
  std::string node_id;
  int slots = 1;
  // A worker that dies before READY is restarted after 100 ms, doubling per
  // consecutive failure up to this, so a broken Python does not fork-bomb.
  int64_t max_restart_delay_us = 5'000'000;
  // After this many failed starts in a row with no worker ready, queued and
  // new tasks fail at once (naming the cause) instead of waiting forever.
  int max_startup_failures = 3;
  // A worker that has not sent READY this long after its start (hung in an
  // import, a stuck filesystem) is killed and counts as a failed start, so a
  // slot never stays 'starting' forever.
  int64_t ready_timeout_us = 120'000'000;
  // The largest result a task may return (the head's payload limit), for
  // the error of one that is larger.
  uint64_t max_result_bytes = 256ull << 20;
  // The node's cores as registered (what grants index). Placed tasks and
  // plain ones share max(cores, slots): a placed task holds its cores from
  // its arrival, a plain task counts one.
  int cores = 0;
  // How often the resident memory of tasks with a memory limit is measured.
  int64_t memory_check_us = 100'000;
  // How long the end of a task whose process a stop signal killed (one the
  // agent did not send) is held before it is reported: see held_reports.h.
  int64_t stop_signal_hold_us = 2'000'000;
};

class PoolState {
 public:
  using Limits = TaskLimits;  // what is enforced on a running task

  enum class SlotState {
    kDown,      // no process; restart at restart_at_us
    kStarting,  // started, READY not yet received
    kIdle,      // ready, no task
    kBusy,      // running a task
    kKilled,    // SIGKILLed by us (cancel, protocol error); waiting for its exit
  };

  using Clock = std::function<int64_t()>;  // microseconds since the Unix epoch

  PoolState(PoolOptions options, WorkerControl* control, TaskEventSink* sink, Clock now_us);
  // Results still held (held_reports.h) are dropped, and logged: the agent
  // stops, and the head runs those tasks again as its node is lost.
  ~PoolState();

  // Starts every slot's worker.
  void StartAll();

  // A task from the head. Placed tasks (grant.cpus) wait until their cores
  // are free of plain tasks (no plain task starts meanwhile), are pinned to
  // them, and are killed past their walltime or memory limit (failing with
  // FAILURE_TIMED_OUT / FAILURE_OUT_OF_MEMORY); a plain task with a
  // walltime likewise.
  void Submit(v1::TaskAssignment task);
  // This node's hold-only share of an MPI gang led elsewhere: its cores are
  // held (for no task here) until EndHold. Returns false for a repeat.
  bool Hold(const v1::TaskAssignment& task);
  void EndHold(uint64_t task_id);
  // A queued task is dropped and a running one's worker killed; either way the
  // task is reported CANCELED with `reason`. Unknown ids (already finished)
  // are ignored: the head decides what a late cancel means.
  void Cancel(uint64_t task_id, const std::string& reason);
  // Drops those of `task_ids` that are queued (not started), without
  // reporting them, and returns them (the head re-places them).
  std::vector<uint64_t> Reclaim(const std::vector<uint64_t>& task_ids);

  // Events from the process layer.
  void OnReady(int slot);
  void OnTaskOutput(int slot, uint64_t task_id, v1::Outcome outcome, std::string data);
  // The worker's result (or exception) of `bytes` was over the limit and not
  // sent: the task fails with FAILURE_TOO_LARGE; the worker takes the next.
  void OnTaskTooLarge(int slot, uint64_t task_id, uint64_t bytes);
  // The worker broke the pipe protocol (oversized or unexpected frame): it is
  // killed and its task fails with the error's text.
  void OnProtocolError(int slot, const absl::Status& error);
  // The worker in `slot` is known to be dead but frames it wrote before
  // dying are still to be delivered: they count, but it gets no new task.
  void OnWorkerExiting(int slot);
  // The worker in `slot` has exited and been reaped; `how` is DescribeExit(),
  // `signal` the signal that killed it (0: it exited).
  void OnWorkerExit(int slot, const std::string& how, int signal = 0);

  // A started executable ended (outcome OK / APP_EXCEPTION with data =
  // ExecutableResult, or SYSTEM_ERROR with `error` when it could not run).
  // Frees its slot; reported unless it was cancelled. `signal`: the signal
  // that killed it when the agent did not send it (0 otherwise).
  void OnExecutableDone(uint64_t task_id, v1::Outcome outcome, std::string data,
                        std::string error, int signal = 0);

  // Restarts workers whose restart time has come; kills workers that did
  // not get ready within ready_timeout_us; reports held results whose hold
  // ended.
  void Tick();
  // When Tick next has something to do, if ever.
  std::optional<int64_t> NextWakeUs() const;

  int slots() const { return static_cast<int>(slots_.size()); }
  // Slots in use: Python workers running a task plus running executables
  // (an executable occupies a slot, so there are never more tasks running
  // than slots, which is what the head schedules for).
  int busy() const { return busy_; }
  int executables_running() const { return static_cast<int>(exe_running_.size()); }
  int idle() const { return static_cast<int>(idle_.size()); }
  // Cores placed tasks hold (queued, running, held) and those running or held.
  int held_cores() const { return cores_.held_all(); }
  int held_running_cores() const { return cores_.held_running(); }
  int plain_running() const { return plain_running_; }
  size_t queued() const { return queued_ids_.size(); }
  SlotState slot_state(int slot) const { return slots_[slot].state; }
  int slot_pid(int slot) const { return slots_[slot].pid; }
  std::optional<uint64_t> slot_task(int slot) const;

 private:
  struct Slot {
    SlotState state = SlotState::kDown;
    int pid = 0;
    int64_t restart_at_us = 0;
    int consecutive_start_failures = 0;
    int64_t started_at_us = 0;     // valid in kStarting
    bool ready_timed_out = false;  // killed for not sending READY in time
    uint64_t task_id = 0;  // valid in kBusy
    int64_t start_us = 0;  // valid in kBusy
    bool exiting = false;  // see OnWorkerExiting
    Limits limits;         // valid in kBusy
    // The plain CPU set version the worker is pinned to; -1: a grant's.
    int64_t pinned_version = 0;
  };

  struct RunningExecutable {
    int pid = 0;
    int64_t start_us = 0;
    bool cancelled = false;  // reported CANCELED; waiting for its end to free the slot
    Limits limits;
  };

  void Dispatch();
  void StartExecutable(v1::TaskAssignment task);
  void StartSlot(int slot);
  void StartFailed(int slot, const std::string& what);
  void RemoveIdle(int slot);
  // Reports the end of the task running in `slot`; the caller sets the
  // slot's next state. `signal`: see Emit.
  void FinishRunning(int slot, v1::Outcome outcome, v1::FailureKind failure, std::string data,
                     std::string error, int signal = 0);
  // Hands `result` to the sink, or holds it when `signal` (what killed the
  // task's process, not sent by the agent) is a stop signal: held_reports.h.
  void Emit(v1::TaskResult result, int signal);
  // The slot's worker goes back to idle after the task it ran ended.
  void BackToIdle(int slot);
  void FailQueuedIfBroken();
  void Report(uint64_t task_id, v1::Outcome outcome, v1::FailureKind failure, std::string error,
              int worker_pid = 0, int64_t start_us = 0);
  std::string TaskPrefix(uint64_t task_id) const;

  bool PlainRoom() const { return plain_running_ + cores_.held_all() < budget_; }
  bool PlacedRoom(int cores) const {
    return plain_running_ + cores_.held_running() + cores <= budget_ ||
           (plain_running_ + cores_.held_running() == 0);  // larger than the node: alone
  }
  // Cores of a placed task starting, ending (any way): taken or freed, and
  // the process layer told.
  void PlacedStarted(uint64_t task_id);
  void PlacedEnded(uint64_t task_id);
  // The CPUs no running placed task holds changed: new version, re-pin busy
  // plain workers.
  void PlainCpusChanged();
  void NoteLimits(const Limits& limits, int delta);
  // Kills tasks past their walltime or memory limit.
  void EnforceLimits(int64_t now);
  void KillForLimit(uint64_t task_id, int slot, v1::FailureKind kind, const std::string& why);

  PoolOptions options_;
  int budget_ = 1;
  WorkerControl* control_;
  TaskEventSink* sink_;
  Clock now_us_;

  std::vector<Slot> slots_;
  std::vector<int> idle_;  // stack: the most recently used worker is reused first (warm caches)
  int busy_ = 0;
  // Both kinds, in arrival order; an executable does not wait behind Python
  // tasks that have no ready worker.
  std::deque<v1::TaskAssignment> queue_;
  std::unordered_map<uint64_t, RunningExecutable> exe_running_;
  std::unordered_set<uint64_t> queued_ids_;      // ids in queue_ not cancelled
  std::unordered_map<uint64_t, int> running_;   // task id -> slot
  // Failed starts since a worker last became ready, and the latest reason.
  int start_failures_ = 0;
  std::string last_start_failure_;

  // Placed tasks (queued, running) and holds.
  PlacedCores cores_;
  int plain_running_ = 0;
  // Running tasks with a walltime or memory limit (Tick skips the scan when 0).
  int limited_deadline_ = 0;
  int limited_memory_ = 0;
  int64_t next_memory_check_us_ = 0;
  HeldReports held_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_POOL_STATE_H_
