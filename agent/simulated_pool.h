// A benchmark/test stand-in for the worker pool: `dragon-agent
// --simulate-workers N` registers N worker slots but starts no Python
// process. Each task it is sent "runs" in a free slot for --simulate-task-us
// microseconds (timed by one thread with a deadline heap, not a thread or
// process per task) and is then reported through the ordinary batched head
// connection as outcome OK with EMPTY data, worker pid 0 and the error text
// kSimulatedMarker, so a simulated result cannot pass for a real one: a
// Parsl client fails to deserialize it.
//
// What it is for: measuring the head (scheduling throughput as agents grow,
// memory) with hundreds of agents on a small machine, where real workers
// would measure Python start-up and pipes instead.
#ifndef DRAGON_AGENT_SIMULATED_POOL_H_
#define DRAGON_AGENT_SIMULATED_POOL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <queue>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "agent/interfaces.h"

namespace dragon::agent {

// Put in TaskResult.error of every simulated result.
inline constexpr char kSimulatedMarker[] =
    "simulated by dragon-agent --simulate-workers: the payload was not run";

struct SimulatedPoolOptions {
  std::string node_id;
  int slots = 1;
  // How long each task occupies its slot; 0 = it ends as soon as it starts.
  int64_t task_us = 0;
};

class SimulatedPool : public TaskHandler {
 public:
  SimulatedPool(SimulatedPoolOptions options, TaskEventSink* sink);
  ~SimulatedPool() override;  // Shutdown()

  // Starts the timer thread.
  void Start();

  // TaskHandler; thread-safe.
  void SubmitTasks(std::vector<v1::TaskAssignment> tasks) override;
  void CancelTasks(std::vector<uint64_t> task_ids, std::string reason) override;
  void ReclaimTasks(std::vector<uint64_t> task_ids) override;
  // Answered from the timer thread, the loop that "runs" the tasks.
  void Ping(uint64_t seq) override;
  int BusyWorkers() const override;

  // Tasks that ended here so far (any outcome).
  uint64_t finished() const;

  // Stops the thread; tasks still queued or running are dropped unreported
  // (the head's stream is ending anyway). Idempotent.
  void Shutdown();

 private:
  struct Running {
    int64_t deadline_us;
    uint64_t task_id;
    bool operator>(const Running& o) const { return deadline_us > o.deadline_us; }
  };

  void Loop();
  // Starts queued tasks in free slots and ends those whose time has come;
  // returns when the next deadline is (0 = none).
  int64_t Step(std::vector<v1::TaskStarted>* started, std::vector<v1::TaskResult>* results)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::TaskResult MakeResult(uint64_t task_id, v1::Outcome outcome, int64_t start_us,
                            int64_t end_us, std::string error) const;

  SimulatedPoolOptions options_;
  TaskEventSink* sink_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::deque<uint64_t> queue_ ABSL_GUARDED_BY(mu_);  // ids; cancelled ones are skipped
  std::unordered_set<uint64_t> queued_ ABSL_GUARDED_BY(mu_);
  // Running task -> its start time; the heap may hold cancelled entries,
  // recognised by their absence here.
  std::unordered_map<uint64_t, int64_t> running_ ABSL_GUARDED_BY(mu_);
  std::priority_queue<Running, std::vector<Running>, std::greater<Running>> deadlines_
      ABSL_GUARDED_BY(mu_);
  std::vector<v1::TaskResult> cancelled_ ABSL_GUARDED_BY(mu_);  // to report
  uint64_t finished_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ping_seq_ ABSL_GUARDED_BY(mu_) = 0;          // to answer; 0 = none
  std::vector<uint64_t> released_ ABSL_GUARDED_BY(mu_);  // reclaimed, to report
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ = false;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_SIMULATED_POOL_H_
