#include "agent/pool_state.h"

#include <signal.h>

#include <map>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace dragon::agent {
namespace {

// Test double for the process layer: records what PoolState asked for.
class ScriptedControl : public WorkerControl {
 public:
  absl::StatusOr<int> StartWorker(int slot) override {
    starts.push_back(slot);
    if (fail_starts) return absl::InternalError("fork: out of memory");
    return next_pid++;
  }
  void SendTask(int slot, v1::TaskAssignment task) override {
    sent.push_back({slot, task.task_id()});
  }
  void KillWorker(int slot) override { killed.push_back(slot); }
  absl::StatusOr<int> StartExecutable(const v1::TaskAssignment& task) override {
    if (task.payload() == "missing") {
      return absl::NotFoundError("cannot execute 'missing': No such file or directory");
    }
    exe_started.push_back(task.task_id());
    return next_pid++;
  }
  void KillExecutable(uint64_t task_id) override { exe_killed.push_back(task_id); }
  void PinWorker(int slot, const std::vector<uint32_t>& cpus) override {
    pins.push_back({slot, cpus});
  }
  void SetPlainCpus(const std::vector<uint32_t>& cpus) override { plain_cpus = cpus; }
  uint64_t TreeMemoryBytes(int pid) override { return memory[pid]; }
  void MpiShareHeld(uint64_t task_id, const std::vector<uint32_t>& cpus) override {
    shares[task_id] = cpus;
  }
  void MpiShareReleased(uint64_t task_id) override { shares.erase(task_id); }
  std::map<uint64_t, std::vector<uint32_t>> shares;
  std::vector<std::pair<int, std::vector<uint32_t>>> pins;
  std::vector<uint32_t> plain_cpus;
  std::map<int, uint64_t> memory;
  std::vector<uint64_t> exe_started;
  std::vector<uint64_t> exe_killed;
  std::string WorkerLogPath(int slot) const override {
    return "/run/workers/n1/worker-" + std::to_string(slot) + ".log";
  }

  int next_pid = 1000;
  bool fail_starts = false;
  std::vector<int> starts;
  std::vector<std::pair<int, uint64_t>> sent;  // slot, task id
  std::vector<int> killed;
};

class RecordingSink : public TaskEventSink {
 public:
  void TaskStarted(v1::TaskStarted s) override { started.push_back(s); }
  void TaskFinished(v1::TaskResult r) override { results[r.task_id()] = r; }
  void Heartbeat(v1::Heartbeat) override {}
  void TasksReleased(std::vector<uint64_t>) override {}
  std::vector<v1::TaskStarted> started;
  std::map<uint64_t, v1::TaskResult> results;
};

v1::TaskAssignment Task(uint64_t id) {
  v1::TaskAssignment t;
  t.set_task_id(id);
  t.set_kind(v1::PYTHON);
  t.set_payload("payload");
  return t;
}

v1::TaskAssignment Exe(uint64_t id, std::string payload = "spec") {
  v1::TaskAssignment t;
  t.set_task_id(id);
  t.set_kind(v1::EXECUTABLE);
  t.set_payload(std::move(payload));
  return t;
}

struct Fixture {
  explicit Fixture(int slots, int cores = 0)
      : state(Options(slots, cores), &control, &sink, [this] { return now; }) {}
  static PoolOptions Options(int slots, int cores) {
    PoolOptions o;
    o.node_id = "n1";
    o.slots = slots;
    o.cores = cores;
    return o;
  }
  int64_t now = 1'000'000;
  ScriptedControl control;
  RecordingSink sink;
  PoolState state;
};

using S = PoolState::SlotState;

TEST_CASE("tasks wait until a worker has sent READY") {
  Fixture f(2);
  f.state.StartAll();
  CHECK(f.control.starts == std::vector<int>{0, 1});
  f.state.Submit(Task(1));
  CHECK(f.control.sent.empty());
  CHECK(f.state.queued() == 1);
  f.state.OnReady(1);
  REQUIRE(f.control.sent.size() == 1);
  CHECK(f.control.sent[0] == std::make_pair(1, uint64_t{1}));
  REQUIRE(f.sink.started.size() == 1);
  CHECK(f.sink.started[0].worker_pid() == 1001);
  CHECK(f.sink.started[0].start_us() == 1'000'000);
  CHECK(f.state.busy() == 1);
  CHECK(f.state.queued() == 0);
}

TEST_CASE("a result frees the worker for the next queued task, in order") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  for (uint64_t id = 1; id <= 3; ++id) f.state.Submit(Task(id));
  CHECK(f.control.sent.size() == 1);
  f.now = 1'000'500;
  f.state.OnTaskOutput(0, 1, v1::OK, "ret");
  REQUIRE(f.sink.results.count(1) == 1);
  const v1::TaskResult& r = f.sink.results[1];
  CHECK(r.outcome() == v1::OK);
  CHECK(r.data() == "ret");
  CHECK(r.node() == "n1");
  CHECK(r.worker_pid() == 1000);
  CHECK(r.start_us() == 1'000'000);
  CHECK(r.end_us() == 1'000'500);
  REQUIRE(f.control.sent.size() == 2);
  CHECK(f.control.sent[1].second == 2);
  f.state.OnTaskOutput(0, 2, v1::APP_EXCEPTION, "wrapped");
  CHECK(f.sink.results[2].outcome() == v1::APP_EXCEPTION);
  CHECK(f.control.sent.back().second == 3);
}

TEST_CASE("a worker dying mid-task fails only its task, with the documented text, and is replaced") {
  Fixture f(2);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.OnReady(1);
  f.state.Submit(Task(7));
  f.state.Submit(Task(8));
  const int slot7 = f.control.sent[0].second == 7 ? f.control.sent[0].first : f.control.sent[1].first;
  const int pid7 = f.state.slot_pid(slot7);
  f.state.OnWorkerExit(slot7, "killed by signal 9 SIGKILL");
  REQUIRE(f.sink.results.count(7) == 1);
  CHECK(f.sink.results[7].outcome() == v1::SYSTEM_ERROR);
  CHECK(f.sink.results[7].failure() == v1::FAILURE_WORKER_LOST);
  CHECK(f.sink.results[7].error() ==
        "task 7 on node n1: worker pid " + std::to_string(pid7) +
            " died (killed by signal 9 SIGKILL)");
  CHECK(f.sink.results.count(8) == 0);  // the other task is untouched
  CHECK(f.state.slot_state(1 - slot7) == S::kBusy);
  // Replaced at once (it had been ready before).
  CHECK(f.control.starts.back() == slot7);
  CHECK(f.state.slot_state(slot7) == S::kStarting);
  CHECK(f.state.slot_pid(slot7) != pid7);
  f.state.Submit(Task(9));
  CHECK(f.control.sent.size() == 2);  // waits for the replacement's READY
  f.state.OnReady(slot7);
  CHECK(f.control.sent.back() == std::make_pair(slot7, uint64_t{9}));
}

TEST_CASE("a worker killed by a stop signal is reported only after the hold: the agent may be "
          "stopping too (scancel signals the whole job)") {
  Fixture f(2);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.OnReady(1);
  f.state.Submit(Task(7));
  const int slot = f.control.sent.back().first;
  const int pid = f.state.slot_pid(slot);
  f.state.OnWorkerExit(slot, "killed by signal 15 SIGTERM", SIGTERM);
  CHECK(f.sink.results.count(7) == 0);
  // Its slot is free and replaced at once; only the report waits.
  CHECK(f.state.busy() == 0);
  CHECK(f.state.slot_state(slot) == S::kStarting);
  REQUIRE(f.state.NextWakeUs().has_value());
  CHECK(*f.state.NextWakeUs() == f.now + 2'000'000);
  f.now += 1'999'999;
  f.state.Tick();
  CHECK(f.sink.results.count(7) == 0);
  f.now += 1;
  f.state.Tick();
  REQUIRE(f.sink.results.count(7) == 1);
  CHECK(f.sink.results[7].failure() == v1::FAILURE_WORKER_LOST);
  CHECK(f.sink.results[7].error() == "task 7 on node n1: worker pid " + std::to_string(pid) +
                                         " died (killed by signal 15 SIGTERM)");
  CHECK(f.sink.results[7].end_us() == 1'000'000);  // when it died, not when reported
  f.sink.results.clear();
  f.now += 10'000'000;
  f.state.Tick();
  CHECK(f.sink.results.empty());  // reported once
}

TEST_CASE("SIGKILL and exits are reported at once; held results of a stopping agent are dropped") {
  std::map<uint64_t, v1::TaskResult> reported;
  {
    Fixture f(3);
    f.state.StartAll();
    for (int slot = 0; slot < 3; ++slot) f.state.OnReady(slot);
    f.state.Submit(Task(1));
    const int slot1 = f.control.sent.back().first;
    f.state.Submit(Task(2));
    const int slot2 = f.control.sent.back().first;
    f.state.Submit(Exe(3));
    f.state.OnWorkerExit(slot1, "killed by signal 9 SIGKILL", SIGKILL);
    CHECK(f.sink.results.count(1) == 1);
    f.state.OnWorkerExit(slot2, "killed by signal 2 SIGINT", SIGINT);
    f.state.OnExecutableDone(3, v1::APP_EXCEPTION, "result", "", SIGHUP);
    CHECK(f.sink.results.count(2) == 0);
    CHECK(f.sink.results.count(3) == 0);
    CHECK(f.state.busy() == 0);
    f.now += 1'000'000;
    f.state.Tick();
    reported = f.sink.results;
  }  // the pool ends within the hold, as when the agent's own SIGTERM stops it
  CHECK(reported.size() == 1);  // 2 and 3 never: the head runs them again with the node lost
}

TEST_CASE("exit code text is carried into the error") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.Submit(Task(3));
  f.state.OnWorkerExit(0, "exited with code 3");
  CHECK(f.sink.results[3].error() == "task 3 on node n1: worker pid 1000 died (exited with code 3)");
}

TEST_CASE("cancelling a queued task reports CANCELED and never runs it") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.Submit(Task(1));
  f.state.Submit(Task(2));
  f.state.Submit(Task(3));
  f.state.Cancel(2, "user asked");
  CHECK(f.sink.results[2].outcome() == v1::CANCELED);
  CHECK(f.sink.results[2].error() == "user asked");
  CHECK(f.state.queued() == 1);
  f.state.OnTaskOutput(0, 1, v1::OK, "");
  CHECK(f.control.sent.back().second == 3);  // 2 was skipped
  CHECK(f.control.killed.empty());
}

TEST_CASE("cancelling a running task kills its worker, reports CANCELED once, and replaces it") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.Submit(Task(5));
  f.state.Submit(Task(6));
  f.state.Cancel(5, "");
  CHECK(f.control.killed == std::vector<int>{0});
  CHECK(f.sink.results[5].outcome() == v1::CANCELED);
  CHECK(f.sink.results[5].worker_pid() == 1000);
  CHECK(f.state.slot_state(0) == S::kKilled);
  // A late result from the killed worker is ignored, and so is its death.
  f.state.OnTaskOutput(0, 5, v1::OK, "late");
  CHECK(f.sink.results[5].outcome() == v1::CANCELED);
  f.state.OnWorkerExit(0, "killed by signal 9 SIGKILL");
  CHECK(f.sink.results.size() == 1);
  CHECK(f.state.slot_state(0) == S::kStarting);
  f.state.OnReady(0);
  CHECK(f.control.sent.back().second == 6);
}

TEST_CASE("cancel of an unknown or finished task does nothing") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.Submit(Task(1));
  f.state.OnTaskOutput(0, 1, v1::OK, "");
  f.state.Cancel(1, "too late");
  f.state.Cancel(99, "never seen");
  CHECK(f.sink.results.size() == 1);
  CHECK(f.sink.results[1].outcome() == v1::OK);
  CHECK(f.control.killed.empty());
}

TEST_CASE("a result for the wrong task is a protocol error that fails the running task") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.Submit(Task(1));
  f.state.OnTaskOutput(0, 42, v1::OK, "");
  CHECK(f.control.killed == std::vector<int>{0});
  CHECK(f.sink.results[1].outcome() == v1::SYSTEM_ERROR);
  CHECK_THAT(f.sink.results[1].error(),
             Catch::StartsWith("task 1 on node n1: worker pid 1000: ") &&
                 Catch::Contains("result for task 42"));
}

TEST_CASE("workers that never get ready back off, then queued and new tasks fail with the cause") {
  Fixture f(1);
  f.state.StartAll();
  f.state.Submit(Task(1));
  f.state.OnWorkerExit(0, "exited with code 1");
  CHECK(f.state.slot_state(0) == S::kDown);
  REQUIRE(f.state.NextWakeUs().has_value());
  CHECK(*f.state.NextWakeUs() == f.now + 100'000);
  f.state.Tick();  // too early
  CHECK(f.control.starts.size() == 1);
  f.now += 100'000;
  f.state.Tick();
  CHECK(f.control.starts.size() == 2);
  f.state.OnWorkerExit(0, "exited with code 1");
  CHECK(*f.state.NextWakeUs() == f.now + 200'000);  // doubled
  CHECK(f.sink.results.empty());  // two failures: still hoping
  f.now += 200'000;
  f.state.Tick();
  f.state.OnWorkerExit(0, "exited with code 1");
  REQUIRE(f.sink.results.count(1) == 1);
  CHECK(f.sink.results[1].outcome() == v1::SYSTEM_ERROR);
  CHECK(f.sink.results[1].error() ==
        "task 1 on node n1: no worker could start: worker pid 1002 exited with code 1 before it "
        "was ready (see /run/workers/n1/worker-0.log)");
  f.state.Submit(Task(2));  // fails at once while broken
  CHECK(f.sink.results[2].outcome() == v1::SYSTEM_ERROR);
  // A worker that finally starts clears the condition.
  f.now += 400'000;
  f.state.Tick();
  f.state.OnReady(0);
  f.state.Submit(Task(3));
  CHECK(f.sink.results.count(3) == 0);
  CHECK(f.control.sent.back().second == 3);
}

TEST_CASE("a failing fork is retried like a failed start") {
  Fixture f(1);
  f.control.fail_starts = true;
  f.state.StartAll();
  CHECK(f.state.slot_state(0) == S::kDown);
  f.control.fail_starts = false;
  f.now += 100'000;
  f.state.Tick();
  CHECK(f.state.slot_state(0) == S::kStarting);
}

TEST_CASE("an idle worker that dies is replaced without failing anything") {
  Fixture f(2);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.OnReady(1);
  f.state.OnWorkerExit(1, "killed by signal 15 SIGTERM");
  CHECK(f.sink.results.empty());
  CHECK(f.state.idle() == 1);
  f.state.Submit(Task(1));
  CHECK(f.control.sent.back() == std::make_pair(0, uint64_t{1}));
}

TEST_CASE("a result read after the worker was reaped counts, but the dead worker gets no new task") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.Submit(Task(1));
  f.state.Submit(Task(2));
  f.state.OnWorkerExiting(0);
  f.state.OnTaskOutput(0, 1, v1::OK, "done");
  CHECK(f.sink.results[1].outcome() == v1::OK);
  CHECK(f.control.sent.size() == 1);  // task 2 still queued
  f.state.OnWorkerExit(0, "exited with code 0");
  CHECK(f.sink.results.count(2) == 0);
  f.state.OnReady(0);  // the replacement
  CHECK(f.control.sent.back() == std::make_pair(0, uint64_t{2}));
}

TEST_CASE("a non-PYTHON task is refused with a SYSTEM_ERROR naming the kind") {
  Fixture f(1);
  f.state.StartAll();
  v1::TaskAssignment t = Task(4);
  t.set_kind(v1::TASK_KIND_UNSPECIFIED);
  f.state.Submit(t);
  CHECK(f.sink.results[4].outcome() == v1::SYSTEM_ERROR);
  CHECK_THAT(f.sink.results[4].error(), Catch::Contains("TASK_KIND_UNSPECIFIED"));
}

}  // namespace
}  // namespace dragon::agent

namespace dragon::agent {
namespace {

TEST_CASE("executables take slots: never more tasks running than slots") {
  Fixture f(2);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.OnReady(1);
  f.state.Submit(Exe(1));
  f.state.Submit(Task(2));
  f.state.Submit(Task(3));  // no slot left: waits although worker 1 idles
  CHECK(f.control.exe_started == std::vector<uint64_t>{1});
  CHECK(f.control.sent.size() == 1);
  CHECK(f.state.busy() == 2);
  CHECK(f.state.queued() == 1);
  REQUIRE(f.sink.started.size() == 2);
  CHECK(f.sink.started[0].task_id() == 1);
  CHECK(f.sink.started[0].worker_pid() == 1002);  // the executable's pid
  f.now += 10;
  f.state.OnExecutableDone(1, v1::APP_EXCEPTION, "result-bytes", "'sh' (pid 1002) exited with code 3");
  const v1::TaskResult& r = f.sink.results[1];
  CHECK(r.outcome() == v1::APP_EXCEPTION);
  CHECK(r.data() == "result-bytes");
  CHECK(r.error() == "task 1 on node n1: 'sh' (pid 1002) exited with code 3");
  CHECK(r.worker_pid() == 1002);
  CHECK(r.end_us() - r.start_us() == 10);
  CHECK(f.control.sent.size() == 2);  // task 3 got the freed slot
  CHECK(f.state.busy() == 2);
}

TEST_CASE("executables do not wait for Python workers to start") {
  Fixture f(2);
  f.state.StartAll();
  f.state.Submit(Task(1));
  f.state.Submit(Exe(2));
  CHECK(f.control.exe_started == std::vector<uint64_t>{2});
  CHECK(f.state.queued() == 1);
  f.state.OnReady(0);
  CHECK(f.control.sent.size() == 1);
  CHECK(f.state.busy() == 2);
}

TEST_CASE("an executable that cannot start fails at once; cancel of a running one kills it") {
  Fixture f(1);
  f.state.StartAll();
  f.state.Submit(Exe(1, "missing"));
  CHECK(f.sink.results[1].outcome() == v1::SYSTEM_ERROR);
  CHECK(f.sink.results[1].error() ==
        "task 1 on node n1: cannot execute 'missing': No such file or directory");
  CHECK(f.state.busy() == 0);
  f.state.Submit(Exe(2));
  f.state.Submit(Exe(3));
  f.state.Cancel(2, "cancelled by test");
  CHECK(f.sink.results[2].outcome() == v1::CANCELED);
  CHECK(f.control.exe_killed == std::vector<uint64_t>{2});
  // The slot stays taken until the killed process is reaped.
  CHECK(f.state.busy() == 1);
  CHECK(f.control.exe_started == std::vector<uint64_t>{2});
  f.state.OnExecutableDone(2, v1::APP_EXCEPTION, "x", "killed");
  CHECK(f.sink.results[2].outcome() == v1::CANCELED);  // not overwritten
  CHECK(f.control.exe_started == std::vector<uint64_t>{2, 3});
}

TEST_CASE("broken Python workers fail Python tasks but not executables") {
  Fixture f(1);
  f.control.fail_starts = true;
  f.state.StartAll();
  for (int i = 0; i < 3; ++i) {
    f.now += 10'000'000;
    f.state.Tick();
  }
  f.state.Submit(Task(1));
  CHECK(f.sink.results[1].outcome() == v1::SYSTEM_ERROR);
  f.state.Submit(Exe(2));
  CHECK(f.control.exe_started == std::vector<uint64_t>{2});
}

TEST_CASE("a worker that never sends READY is killed after the timeout and restarted") {
  Fixture f(1);
  f.state.StartAll();
  REQUIRE(f.state.NextWakeUs().has_value());
  CHECK(*f.state.NextWakeUs() == f.now + 120'000'000);
  f.now += 119'000'000;
  f.state.Tick();
  CHECK(f.control.killed.empty());
  f.now += 1'000'000;
  f.state.Tick();
  CHECK(f.control.killed == std::vector<int>{0});
  f.state.Tick();  // killed once, not again while its exit is pending
  CHECK(f.control.killed.size() == 1);
  f.state.OnWorkerExit(0, "killed by signal 9 SIGKILL");
  CHECK(f.state.slot_state(0) == S::kDown);
  f.now += 100'000;  // first restart delay
  f.state.Tick();
  CHECK(f.control.starts.size() == 2);
  CHECK(f.state.slot_state(0) == S::kStarting);
  f.state.OnReady(0);
  f.now += 500'000'000;
  f.state.Tick();
  CHECK(f.control.killed.size() == 1);  // a ready worker is never timed out
}

}  // namespace
}  // namespace dragon::agent

namespace dragon::agent {
namespace {

TEST_CASE("a result over the limit fails its task alone and the worker takes the next") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.Submit(Task(1));
  f.state.Submit(Task(2));
  f.state.OnTaskTooLarge(0, 1, 300ull << 20);
  REQUIRE(f.sink.results.count(1) == 1);
  const v1::TaskResult& r = f.sink.results[1];
  CHECK(r.outcome() == v1::SYSTEM_ERROR);
  CHECK(r.failure() == v1::FAILURE_TOO_LARGE);
  CHECK(r.error().find("its result is 314572800 bytes, more than the 268435456 bytes") !=
        std::string::npos);
  CHECK(r.error().find("--max-payload-mb") != std::string::npos);
  CHECK(f.control.killed.empty());
  CHECK(f.control.sent.back().second == 2);  // same worker, next task
}

TEST_CASE("reclaim drops queued tasks without reporting them; running ones stay") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  for (uint64_t id = 1; id <= 3; ++id) f.state.Submit(Task(id));
  auto released = f.state.Reclaim({1, 3, 42});
  CHECK(released == std::vector<uint64_t>{3});
  CHECK(f.state.queued() == 1);
  f.state.OnTaskOutput(0, 1, v1::OK, "r");
  CHECK(f.control.sent.back().second == 2);
  f.state.OnTaskOutput(0, 2, v1::OK, "r");
  CHECK(f.control.sent.size() == 2);  // 3 never runs
  CHECK(f.sink.results.count(3) == 0);
}

v1::TaskAssignment PlacedTask(uint64_t id, std::vector<uint32_t> cpus, uint32_t walltime = 0,
                              uint64_t memory = 0, v1::TaskKind kind = v1::PYTHON) {
  v1::TaskAssignment t = kind == v1::PYTHON ? Task(id) : Exe(id);
  for (uint32_t c : cpus) t.mutable_grant()->add_cpus(c);
  t.mutable_grant()->set_walltime_s(walltime);
  t.mutable_grant()->set_memory_bytes(memory);
  return t;
}

TEST_CASE("a placed task waits for plain tasks to leave its cores; no plain task starts "
          "meanwhile",
          "[resources]") {
  Fixture f(4, 4);
  f.state.StartAll();
  for (int i = 0; i < 4; ++i) f.state.OnReady(i);
  for (uint64_t id = 1; id <= 4; ++id) f.state.Submit(Task(id));
  CHECK(f.state.plain_running() == 4);
  f.state.Submit(PlacedTask(10, {0, 1}));
  f.state.Submit(Task(5));
  CHECK(f.state.held_cores() == 2);
  CHECK(f.control.sent.size() == 4);
  f.state.OnTaskOutput(f.control.sent[0].first, 1, v1::OK, "r");
  CHECK(f.control.sent.size() == 4);  // 3 plain + 2 placed > 4: it waits, and so does task 5
  f.state.OnTaskOutput(f.control.sent[1].first, 2, v1::OK, "r");
  REQUIRE(f.control.sent.size() == 5);
  CHECK(f.control.sent[4].second == 10);
  CHECK(f.state.held_running_cores() == 2);
  // Pinned to its grant; the plain workers still running moved off those CPUs.
  bool pinned_to_grant = false;
  for (auto& [slot, cpus] : f.control.pins) {
    if (slot == f.control.sent[4].first && cpus == std::vector<uint32_t>{0, 1}) pinned_to_grant = true;
  }
  CHECK(pinned_to_grant);
  CHECK(f.control.plain_cpus == std::vector<uint32_t>{2, 3});
  // Task 5 waits for a plain task to end: 2 plain + 2 held = 4.
  f.state.OnTaskOutput(f.control.sent[2].first, 3, v1::OK, "r");
  REQUIRE(f.control.sent.size() == 6);
  CHECK(f.control.sent[5].second == 5);
  // The placed task ends: its CPUs are plain again.
  f.state.OnTaskOutput(f.control.sent[4].first, 10, v1::OK, "r");
  CHECK(f.state.held_cores() == 0);
  CHECK(f.control.plain_cpus.empty());
}

TEST_CASE("walltime: a Python task past it fails TIMED_OUT, its worker is killed", "[resources]") {
  Fixture f(1, 1);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.Submit(PlacedTask(1, {0}, /*walltime=*/2));
  REQUIRE(f.control.sent.size() == 1);
  REQUIRE(f.state.NextWakeUs().has_value());
  CHECK(*f.state.NextWakeUs() <= f.now + 2'000'000);
  f.now += 1'999'999;
  f.state.Tick();
  CHECK(f.sink.results.empty());
  f.now += 1;
  f.state.Tick();
  REQUIRE(f.sink.results.count(1) == 1);
  CHECK(f.sink.results[1].failure() == v1::FAILURE_TIMED_OUT);
  CHECK(f.sink.results[1].error().find("walltime of 2 s") != std::string::npos);
  CHECK(f.control.killed == std::vector<int>{0});
  CHECK(f.state.held_cores() == 0);
  // The exit that follows is not a second failure.
  f.state.OnWorkerExit(0, "killed by signal 9 SIGKILL");
  CHECK(f.sink.results.size() == 1);
}

TEST_CASE("walltime on a plain task (no cores granted) is enforced too", "[resources]") {
  Fixture f(1);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.Submit(PlacedTask(1, {}, /*walltime=*/1));
  f.now += 1'000'000;
  f.state.Tick();
  REQUIRE(f.sink.results.count(1) == 1);
  CHECK(f.sink.results[1].failure() == v1::FAILURE_TIMED_OUT);
}

TEST_CASE("memory: a task whose tree goes over its limit fails OUT_OF_MEMORY naming it",
          "[resources]") {
  Fixture f(2, 2);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.OnReady(1);
  f.control.memory[1001] = 70 << 20;  // the first worker's own memory when task 1 starts
  f.state.Submit(PlacedTask(1, {0}, 0, /*memory=*/100 << 20));
  f.state.Submit(PlacedTask(2, {1}, 0, /*memory=*/100 << 20));
  const int pid1 = f.state.slot_pid(f.control.sent[0].first);
  const int pid2 = f.state.slot_pid(f.control.sent[1].first);
  // Worker baselines (0 before the tasks started): what the task adds counts.
  REQUIRE(pid1 == 1001);
  f.control.memory[pid1] = 220 << 20;  // 150 MiB beyond the worker's 70
  f.control.memory[pid2] = 50 << 20;
  f.state.Tick();  // not yet time to measure
  CHECK(f.sink.results.empty());
  f.now += 100'000;
  f.state.Tick();
  REQUIRE(f.sink.results.count(1) == 1);
  CHECK(f.sink.results[1].failure() == v1::FAILURE_OUT_OF_MEMORY);
  CHECK(f.sink.results[1].error().find("used 150 MiB of resident memory beyond the 70 MiB") !=
        std::string::npos);
  CHECK(f.sink.results[1].error().find("limit of 100 MiB") != std::string::npos);
  CHECK(f.sink.results.count(2) == 0);
}

TEST_CASE("an executable past its walltime is reported once, when killed", "[resources]") {
  Fixture f(1, 1);
  f.state.StartAll();
  f.state.Submit(PlacedTask(1, {0}, 1, 0, v1::EXECUTABLE));
  REQUIRE(f.control.exe_started == std::vector<uint64_t>{1});
  CHECK(f.state.held_running_cores() == 1);
  f.now += 1'000'000;
  f.state.Tick();
  REQUIRE(f.sink.results.count(1) == 1);
  CHECK(f.sink.results[1].failure() == v1::FAILURE_TIMED_OUT);
  CHECK(f.control.exe_killed == std::vector<uint64_t>{1});
  f.sink.results.clear();
  f.state.OnExecutableDone(1, v1::APP_EXCEPTION, "", "");
  CHECK(f.sink.results.empty());
  CHECK(f.state.held_cores() == 0);
  CHECK(f.state.busy() == 0);
}

TEST_CASE("a hold takes its cores from plain tasks until it ends", "[resources]") {
  Fixture f(2, 2);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.OnReady(1);
  v1::TaskAssignment hold = PlacedTask(7, {1});
  hold.mutable_grant()->set_hold_only(true);
  hold.mutable_grant()->mutable_mpi()->add_hosts("leader");
  hold.clear_payload();
  f.state.Submit(hold);  // a hold-only task is held, never run
  CHECK(f.control.sent.empty());
  CHECK(f.control.plain_cpus == std::vector<uint32_t>{0});
  CHECK_FALSE(f.state.Hold(hold));  // a repeat
  f.state.Submit(Task(1));
  f.state.Submit(Task(2));
  CHECK(f.control.sent.size() == 1);  // one core left
  CHECK(f.control.shares[7] == std::vector<uint32_t>{1});  // for dragon-mpi-bind
  f.state.EndHold(7);
  CHECK(f.control.shares.empty());
  CHECK(f.control.sent.size() == 2);
  CHECK(f.sink.results.count(7) == 0);  // a hold reports nothing
}

TEST_CASE("cancel and reclaim of a queued placed task give its cores back", "[resources]") {
  Fixture f(2, 2);
  f.state.StartAll();
  f.state.OnReady(0);
  f.state.OnReady(1);
  f.state.Submit(Task(1));
  f.state.Submit(Task(2));
  f.state.Submit(PlacedTask(3, {0, 1}));
  f.state.Submit(PlacedTask(4, {0, 1}));
  CHECK(f.state.held_cores() == 4);
  f.state.Cancel(3, "user");
  CHECK(f.state.held_cores() == 2);
  CHECK(f.state.Reclaim({4}) == std::vector<uint64_t>{4});
  CHECK(f.state.held_cores() == 0);
  f.state.Submit(Task(5));
  f.state.OnTaskOutput(f.control.sent[0].first, 1, v1::OK, "r");
  CHECK(f.control.sent.back().second == 5);
}

}  // namespace
}  // namespace dragon::agent
