#include "agent/simulated_pool.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

int64_t NowUs() { return absl::ToUnixMicros(absl::Now()); }

}  // namespace

SimulatedPool::SimulatedPool(SimulatedPoolOptions options, TaskEventSink* sink)
    : options_(std::move(options)), sink_(sink) {
  if (options_.slots < 1) options_.slots = 1;
  if (options_.task_us < 0) options_.task_us = 0;
}

SimulatedPool::~SimulatedPool() { Shutdown(); }

void SimulatedPool::Start() {
  if (started_) return;
  started_ = true;
  thread_ = std::thread([this] { Loop(); });
}

void SimulatedPool::Shutdown() {
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

int SimulatedPool::BusyWorkers() const {
  absl::MutexLock l(&mu_);
  return static_cast<int>(running_.size());
}

uint64_t SimulatedPool::finished() const {
  absl::MutexLock l(&mu_);
  return finished_;
}

void SimulatedPool::SubmitTasks(std::vector<v1::TaskAssignment> tasks) {
  if (tasks.empty()) return;
  std::vector<v1::TaskStarted> started;
  std::vector<v1::TaskResult> results;
  {
    absl::MutexLock l(&mu_);
    for (const v1::TaskAssignment& t : tasks) {
      const uint64_t id = t.task_id();
      if (queued_.count(id) != 0 || running_.count(id) != 0) {
        spdlog::warn("task {} submitted again while already queued or running; ignored", id);
        continue;
      }
      queued_.insert(id);
      queue_.push_back(id);
    }
    if (options_.task_us > 0) {
      wake_ = true;  // the timer thread starts them
      return;
    }
    // Tasks that take no time end right here, on the caller's (the stream
    // reader's) thread: one thread hop less per batch, so that hundreds of
    // simulated agents cost the machine as little as possible.
    Step(&started, &results);
  }
  sink_->TaskEvents(std::move(started), std::move(results));
}

void SimulatedPool::CancelTasks(std::vector<uint64_t> task_ids, std::string reason) {
  if (task_ids.empty()) return;
  const std::string why = reason.empty() ? "cancelled" : reason;
  const int64_t now = NowUs();
  absl::MutexLock l(&mu_);
  for (uint64_t id : task_ids) {
    int64_t start = now;
    if (queued_.erase(id) == 0) {  // left in queue_, skipped when reached
      auto it = running_.find(id);
      if (it == running_.end()) continue;  // already finished: the head sorts it out
      start = it->second;
      running_.erase(it);  // its heap entry is skipped when it comes due
    }
    ++finished_;
    cancelled_.push_back(MakeResult(id, v1::CANCELED, start, now, why));
  }
  wake_ = true;
}

void SimulatedPool::ReclaimTasks(std::vector<uint64_t> task_ids) {
  absl::MutexLock l(&mu_);
  for (uint64_t id : task_ids) {
    if (queued_.erase(id) != 0) released_.push_back(id);  // left in queue_, skipped
  }
  wake_ = true;
}

void SimulatedPool::Ping(uint64_t seq) {
  absl::MutexLock l(&mu_);
  ping_seq_ = seq;
  wake_ = true;
}

v1::TaskResult SimulatedPool::MakeResult(uint64_t task_id, v1::Outcome outcome, int64_t start_us,
                                         int64_t end_us, std::string error) const {
  v1::TaskResult r;
  r.set_task_id(task_id);
  r.set_outcome(outcome);
  // data stays empty: there is no return value, and nothing can unpickle one.
  if (outcome == v1::OK) {
    r.set_error(kSimulatedMarker);
  } else {
    r.set_error(absl::StrCat("task ", task_id, " on node ", options_.node_id, ": ", error));
  }
  r.set_node(options_.node_id);
  r.set_worker_pid(0);  // no worker process ran it
  r.set_start_us(start_us);
  r.set_end_us(end_us);
  return r;
}

int64_t SimulatedPool::Step(std::vector<v1::TaskStarted>* started,
                            std::vector<v1::TaskResult>* results) {
  wake_ = false;  // everything submitted so far is seen below
  const int64_t now = NowUs();
  for (auto& r : cancelled_) results->push_back(std::move(r));
  cancelled_.clear();
  while (!deadlines_.empty() && deadlines_.top().deadline_us <= now) {
    const Running due = deadlines_.top();
    deadlines_.pop();
    auto it = running_.find(due.task_id);
    if (it == running_.end()) continue;  // cancelled while running
    results->push_back(MakeResult(due.task_id, v1::OK, it->second, now, ""));
    running_.erase(it);
    ++finished_;
  }
  const size_t slots = static_cast<size_t>(options_.slots);
  while (!queue_.empty() && running_.size() < slots) {
    const uint64_t id = queue_.front();
    queue_.pop_front();
    if (queued_.erase(id) == 0) continue;  // cancelled while queued
    v1::TaskStarted& s = started->emplace_back();
    s.set_task_id(id);
    s.set_worker_pid(0);
    s.set_start_us(now);
    if (options_.task_us == 0) {
      results->push_back(MakeResult(id, v1::OK, now, now, ""));
      ++finished_;
    } else {
      running_.emplace(id, now);
      deadlines_.push({now + options_.task_us, id});
    }
  }
  return deadlines_.empty() ? 0 : deadlines_.top().deadline_us;
}

void SimulatedPool::Loop() {
  std::vector<v1::TaskStarted> started;
  std::vector<v1::TaskResult> results;
  std::vector<uint64_t> released;
  uint64_t ping = 0;
  v1::Heartbeat beat;
  auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stop_; };
  while (true) {
    {
      absl::MutexLock l(&mu_);
      if (stop_) return;
      const int64_t next = Step(&started, &results);
      released.swap(released_);
      ping = ping_seq_;
      ping_seq_ = 0;
      if (ping != 0) {
        beat.set_ping_seq(ping);
        beat.set_busy_workers(static_cast<uint32_t>(running_.size()));
        beat.set_ready_workers(static_cast<uint32_t>(options_.slots));
        beat.set_queued_tasks(static_cast<uint32_t>(queued_.size()));
      }
      if (started.empty() && results.empty() && released.empty() && ping == 0) {
        if (next == 0) {
          mu_.Await(absl::Condition(&woken));
        } else {
          mu_.AwaitWithDeadline(absl::Condition(&woken), absl::FromUnixMicros(next));
        }
        continue;
      }
    }
    // Outside our lock: the sink takes its own, and SubmitTasks must not wait.
    // All at once: one wake-up of the head connection's writer per burst.
    if (!started.empty() || !results.empty()) {
      sink_->TaskEvents(std::move(started), std::move(results));
    }
    if (!released.empty()) sink_->TasksReleased(std::move(released));
    if (ping != 0) sink_->Heartbeat(beat);
    started.clear();
    results.clear();
    released.clear();
  }
}

}  // namespace dragon::agent
