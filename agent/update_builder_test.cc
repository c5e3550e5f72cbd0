#include "agent/update_builder.h"

#include <catch2/catch.hpp>
#include <string>

namespace dragon::agent {
namespace {

v1::TaskStarted Start(uint64_t id) {
  v1::TaskStarted s;
  s.set_task_id(id);
  s.set_worker_pid(7);
  s.set_start_us(1000 + id);
  return s;
}

v1::TaskResult Result(uint64_t id, size_t data_bytes = 0) {
  v1::TaskResult r;
  r.set_task_id(id);
  r.set_outcome(v1::OK);
  r.set_worker_pid(7);
  r.set_start_us(1000 + id);
  r.set_end_us(2000 + id);
  r.set_data(std::string(data_bytes, 'x'));
  return r;
}

TEST_CASE("nothing queued: no update", "[update_builder]") {
  std::vector<v1::TaskStarted> started;
  std::vector<v1::TaskResult> results;
  v1::AgentUpdate u;
  CHECK_FALSE(TakeUpdate(&started, &results, 1 << 20, &u));
}

TEST_CASE("a start whose result leaves with it is dropped, others are kept",
          "[update_builder]") {
  std::vector<v1::TaskStarted> started{Start(1), Start(2), Start(3)};
  std::vector<v1::TaskResult> results{Result(1), Result(3)};
  v1::AgentUpdate u;
  REQUIRE(TakeUpdate(&started, &results, 1 << 20, &u));
  REQUIRE(u.started_size() == 1);
  CHECK(u.started(0).task_id() == 2);  // still running: the head must hear of it
  REQUIRE(u.results_size() == 2);
  CHECK(u.results(0).task_id() == 1);
  CHECK(u.results(0).start_us() == 1001);  // the result carries the start
  CHECK(u.results(1).task_id() == 3);
  CHECK(started.empty());
  CHECK(results.empty());
}

TEST_CASE("results over the size cap wait, and so do not hide their starts",
          "[update_builder]") {
  std::vector<v1::TaskStarted> started{Start(1), Start(2)};
  std::vector<v1::TaskResult> results{Result(1, 600), Result(2, 600)};
  v1::AgentUpdate u;
  REQUIRE(TakeUpdate(&started, &results, 1000, &u));
  REQUIRE(u.results_size() == 1);
  CHECK(u.results(0).task_id() == 1);
  REQUIRE(u.started_size() == 1);
  CHECK(u.started(0).task_id() == 2);  // its result is in the next update
  REQUIRE(results.size() == 1);
  CHECK(results[0].task_id() == 2);
  v1::AgentUpdate next;
  REQUIRE(TakeUpdate(&started, &results, 1000, &next));
  CHECK(next.started_size() == 0);
  CHECK(next.results_size() == 1);
  CHECK(results.empty());
}

TEST_CASE("one result bigger than the cap still goes out alone", "[update_builder]") {
  std::vector<v1::TaskStarted> started;
  std::vector<v1::TaskResult> results{Result(1, 5000), Result(2)};
  v1::AgentUpdate u;
  REQUIRE(TakeUpdate(&started, &results, 1000, &u));
  CHECK(u.results_size() == 1);
  CHECK(results.size() == 1);
}

TEST_CASE("a thousand short tasks: one update, results only", "[update_builder]") {
  std::vector<v1::TaskStarted> started;
  std::vector<v1::TaskResult> results;
  for (uint64_t id = 1; id <= 1000; ++id) {
    started.push_back(Start(id));
    results.push_back(Result(id));
  }
  v1::AgentUpdate u;
  REQUIRE(TakeUpdate(&started, &results, 64u << 20, &u));
  CHECK(u.started_size() == 0);
  CHECK(u.results_size() == 1000);
}

}  // namespace
}  // namespace dragon::agent
