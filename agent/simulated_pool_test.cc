#include "agent/simulated_pool.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

namespace dragon::agent {
namespace {

// Collects what the pool reports, like the head connection would.
class Sink : public TaskEventSink {
 public:
  void TaskStarted(v1::TaskStarted s) override {
    std::lock_guard<std::mutex> l(mu_);
    ++started_[s.task_id()];
  }
  void TaskFinished(v1::TaskResult r) override {
    std::lock_guard<std::mutex> l(mu_);
    results_.emplace(r.task_id(), r);
    ++result_count_[r.task_id()];
  }
  void TaskEvents(std::vector<v1::TaskStarted> started,
                  std::vector<v1::TaskResult> results) override {
    {
      std::lock_guard<std::mutex> l(mu_);
      ++bursts_;
    }
    TaskEventSink::TaskEvents(std::move(started), std::move(results));
  }
  void Heartbeat(v1::Heartbeat beat) override {
    std::lock_guard<std::mutex> l(mu_);
    beats_.push_back(beat);
  }
  void TasksReleased(std::vector<uint64_t> ids) override {
    std::lock_guard<std::mutex> l(mu_);
    released_.insert(released_.end(), ids.begin(), ids.end());
  }
  // Waits up to 10 s for `pred` (called with mu_ held).
  template <typename Pred>
  bool WaitUntil(Pred pred) {
    for (int i = 0; i < 2000; ++i) {
      {
        std::lock_guard<std::mutex> l(mu_);
        if (pred()) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
  // Waits up to 10 s for `n` results.
  bool WaitFor(size_t n) {
    for (int i = 0; i < 2000; ++i) {
      {
        std::lock_guard<std::mutex> l(mu_);
        if (results_.size() >= n) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
  std::mutex mu_;
  std::map<uint64_t, int> started_;
  std::map<uint64_t, int> result_count_;
  std::multimap<uint64_t, v1::TaskResult> results_;
  std::vector<v1::Heartbeat> beats_;
  std::vector<uint64_t> released_;
  int bursts_ = 0;  // TaskEvents calls
};

std::vector<v1::TaskAssignment> Tasks(uint64_t from, uint64_t to) {
  std::vector<v1::TaskAssignment> out;
  for (uint64_t id = from; id <= to; ++id) {
    auto& t = out.emplace_back();
    t.set_task_id(id);
    t.set_kind(v1::PYTHON);
    t.set_payload("payload");
  }
  return out;
}

TEST_CASE("zero-time tasks are reported one burst per submitted batch", "[simulated_pool]") {
  Sink sink;
  SimulatedPool pool({"sim-0", 4, 0}, &sink);
  pool.Start();
  pool.SubmitTasks(Tasks(1, 300));
  pool.SubmitTasks(Tasks(301, 400));
  REQUIRE(sink.WaitFor(400));
  pool.Shutdown();
  std::lock_guard<std::mutex> l(sink.mu_);
  // One TaskEvents call per batch: the head connection wakes twice, not 800 times.
  CHECK(sink.bursts_ == 2);
  CHECK(sink.started_.size() == 400);
}

TEST_CASE("every task ends exactly once, marked as simulated", "[simulated_pool]") {
  Sink sink;
  SimulatedPool pool({"sim-0", 4, 0}, &sink);
  pool.Start();
  pool.SubmitTasks(Tasks(1, 500));
  pool.SubmitTasks(Tasks(501, 1000));
  REQUIRE(sink.WaitFor(1000));
  pool.Shutdown();
  std::lock_guard<std::mutex> l(sink.mu_);
  CHECK(sink.results_.size() == 1000);
  for (auto& [id, count] : sink.result_count_) CHECK(count == 1);
  for (auto& [id, count] : sink.started_) CHECK(count == 1);
  const v1::TaskResult& r = sink.results_.find(7)->second;
  CHECK(r.outcome() == v1::OK);
  CHECK(r.data().empty());
  CHECK(r.error() == kSimulatedMarker);
  CHECK(r.node() == "sim-0");
  CHECK(r.worker_pid() == 0);
  CHECK(r.end_us() >= r.start_us());
  CHECK(pool.finished() == 1000);
}

TEST_CASE("a task occupies its slot for the simulated time; slots limit concurrency",
          "[simulated_pool]") {
  Sink sink;
  SimulatedPool pool({"sim-1", 3, 2000}, &sink);  // 3 slots, 2 ms per task
  pool.Start();
  const auto t0 = std::chrono::steady_clock::now();
  pool.SubmitTasks(Tasks(1, 30));
  REQUIRE(sink.WaitFor(30));
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  // 30 tasks / 3 slots * 2 ms = 20 ms at least.
  CHECK(elapsed >= std::chrono::milliseconds(20));
  pool.Shutdown();
  std::lock_guard<std::mutex> l(sink.mu_);
  // Concurrency from the reported times: at most 3 tasks overlap at any start.
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (auto& [id, r] : sink.results_) {
    CHECK(r.end_us() - r.start_us() >= 2000);
    spans.emplace_back(r.start_us(), r.end_us());
  }
  int max_overlap = 0;
  for (auto& [start, end] : spans) {
    int overlap = 0;
    for (auto& [s2, e2] : spans) overlap += s2 <= start && start < e2;
    max_overlap = std::max(max_overlap, overlap);
  }
  CHECK(max_overlap <= 3);
  CHECK(max_overlap >= 2);
}

TEST_CASE("cancel ends queued and running tasks once, as CANCELED", "[simulated_pool]") {
  Sink sink;
  SimulatedPool pool({"sim-2", 1, 10'000'000}, &sink);  // one slot, 10 s per task
  pool.Start();
  pool.SubmitTasks(Tasks(1, 3));
  for (int i = 0; i < 1000 && pool.BusyWorkers() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  REQUIRE(pool.BusyWorkers() == 1);
  pool.CancelTasks({1, 3, 99}, "client session 1 closed");  // running, queued, unknown
  REQUIRE(sink.WaitFor(2));
  {
    std::lock_guard<std::mutex> l(sink.mu_);
    REQUIRE(sink.results_.size() == 2);
    CHECK(sink.results_.find(1)->second.outcome() == v1::CANCELED);
    CHECK(sink.results_.find(3)->second.outcome() == v1::CANCELED);
    CHECK(sink.results_.find(3)->second.error() ==
          "task 3 on node sim-2: client session 1 closed");
  }
  // Task 2 now holds the slot; task 3 never starts.
  auto started2 = [&] {
    std::lock_guard<std::mutex> l(sink.mu_);
    return sink.started_.count(2) != 0;
  };
  for (int i = 0; i < 1000 && !started2(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(started2());
  CHECK(pool.BusyWorkers() == 1);
  pool.Shutdown();
  std::lock_guard<std::mutex> l(sink.mu_);
  CHECK(sink.started_.count(3) == 0);
}

TEST_CASE("pings are answered from the timer loop with the pool's counts", "[simulated_pool]") {
  Sink sink;
  SimulatedPool pool({"sim-3", 2, 10'000'000}, &sink);
  pool.Start();
  pool.SubmitTasks(Tasks(1, 3));
  pool.Ping(7);
  REQUIRE(sink.WaitUntil([&] { return !sink.beats_.empty(); }));
  {
    std::lock_guard<std::mutex> l(sink.mu_);
    CHECK(sink.beats_[0].ping_seq() == 7);
    CHECK(sink.beats_[0].ready_workers() == 2);
  }
  pool.Shutdown();
}

TEST_CASE("reclaim gives back queued tasks only; they never start", "[simulated_pool]") {
  Sink sink;
  SimulatedPool pool({"sim-4", 1, 10'000'000}, &sink);  // one slot, 10 s per task
  pool.Start();
  pool.SubmitTasks(Tasks(1, 3));
  for (int i = 0; i < 1000 && pool.BusyWorkers() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  REQUIRE(pool.BusyWorkers() == 1);
  pool.ReclaimTasks({1, 2, 3, 99});
  REQUIRE(sink.WaitUntil([&] { return sink.released_.size() == 2; }));
  pool.Shutdown();
  std::lock_guard<std::mutex> l(sink.mu_);
  CHECK(sink.released_ == std::vector<uint64_t>{2, 3});
  CHECK(sink.started_.count(2) == 0);
  CHECK(sink.results_.empty());  // released tasks are not reported as ended
}

}  // namespace
}  // namespace dragon::agent
