// A running task's limits from its grant, and the judgement whether it broke one.
#include "agent/task_limits.h"

#include <catch2/catch.hpp>

#include "absl/strings/match.h"

namespace dragon::agent {
namespace {

TEST_CASE("limits come from the grant; breaches name the limit and what was killed") {
  v1::TaskAssignment task;
  CHECK(!TaskLimitsOf(task, 100).any());
  task.mutable_grant()->set_walltime_s(2);
  task.mutable_grant()->set_memory_bytes(10u << 20);
  task.mutable_grant()->add_cpus(3);
  const TaskLimits l = TaskLimitsOf(task, 100);
  CHECK(l.deadline_us == 2'000'100);
  CHECK(l.cores == 1);

  int asked = 0;
  auto memory = [&asked](int) {
    ++asked;
    return uint64_t{11} << 20;
  };
  CHECK(!CheckLimits(l, 1'000'000, /*check_memory=*/false, 42, true, memory));
  CHECK(asked == 0);  // not measured unless asked to
  auto oom = CheckLimits(l, 1'000'000, true, 42, true, memory);
  REQUIRE(oom);
  CHECK(oom->kind == v1::FAILURE_OUT_OF_MEMORY);
  CHECK(absl::StrContains(oom->why, "used 11 MiB"));
  CHECK(absl::StrContains(oom->why, "worker pid 42 and every process it started were killed"));
  auto late = CheckLimits(l, 2'000'100, true, 42, false, memory);
  REQUIRE(late);
  CHECK(late->kind == v1::FAILURE_TIMED_OUT);
  CHECK(absl::StrContains(late->why, "walltime of 2 s"));
  CHECK(absl::StrContains(late->why, "its process pid 42"));
}

}  // namespace
}  // namespace dragon::agent
