#include "agent/held_reports.h"

#include <signal.h>

#include <catch2/catch.hpp>

namespace dragon::agent {
namespace {

v1::TaskResult Result(uint64_t id) {
  v1::TaskResult r;
  r.set_task_id(id);
  return r;
}

TEST_CASE("stop signals are those that stop the agent too") {
  CHECK(IsStopSignal(SIGTERM));
  CHECK(IsStopSignal(SIGINT));
  CHECK(IsStopSignal(SIGHUP));
  CHECK_FALSE(IsStopSignal(0));
  CHECK_FALSE(IsStopSignal(SIGKILL));  // the agent's own kills, the OOM killer
  CHECK_FALSE(IsStopSignal(SIGSEGV));
}

TEST_CASE("held results come out once their hold ended, oldest first, each once") {
  HeldReports held;
  CHECK(held.empty());
  CHECK_FALSE(held.NextReleaseUs().has_value());
  held.Hold(Result(2), 200);
  held.Hold(Result(1), 100);
  held.Hold(Result(3), 200);
  CHECK(*held.NextReleaseUs() == 100);
  CHECK(held.TakeDue(99).empty());
  std::vector<v1::TaskResult> due = held.TakeDue(100);
  REQUIRE(due.size() == 1);
  CHECK(due[0].task_id() == 1);
  CHECK(*held.NextReleaseUs() == 200);
  due = held.TakeDue(1000);
  REQUIRE(due.size() == 2);
  CHECK(due[0].task_id() == 2);
  CHECK(due[1].task_id() == 3);
  CHECK(held.TakeDue(5000).empty());
  CHECK(held.empty());
}

TEST_CASE("DropAll returns what was held and reports nothing later") {
  HeldReports held;
  held.Hold(Result(5), 10);
  held.Hold(Result(6), 20);
  CHECK(held.DropAll() == std::vector<uint64_t>{5, 6});
  CHECK(held.empty());
  CHECK(held.TakeDue(100).empty());
}

}  // namespace
}  // namespace dragon::agent
