#include "daemon/task_table.h"

#include <catch2/catch.hpp>

namespace dragon::daemon {
namespace {

using dragon::v1::TaskState;

TEST_CASE("tasks get dense ids and start pending", "[task_table]") {
  TaskTable table;
  TaskId a = table.Add(dragon::v1::PYTHON, "f", 1, 10, "payload", 100);
  TaskId b = table.Add(dragon::v1::PYTHON, "g", 1, 11, "xy", 101);
  CHECK(a == 1);
  CHECK(b == 2);
  REQUIRE(table.Find(a) != nullptr);
  CHECK(table.Find(a)->state == dragon::v1::PENDING);
  CHECK(table.Find(a)->submitted_us == 100);
  CHECK(table.Find(b)->payload_bytes == 2);
  CHECK(table.Find(0) == nullptr);
  CHECK(table.Find(3) == nullptr);
  CHECK(table.CountInState(dragon::v1::PENDING) == 2);
}

TEST_CASE("a task moves through its life with a timestamp per step", "[task_table]") {
  TaskTable table;
  TaskId id = table.Add(dragon::v1::PYTHON, "f", 1, 1, "p", 1);
  REQUIRE(table.Transition(id, dragon::v1::SCHEDULED, 2).ok());
  REQUIRE(table.Transition(id, dragon::v1::RUNNING, 3).ok());
  REQUIRE(table.Transition(id, dragon::v1::DONE, 4).ok());
  const Task* t = table.Find(id);
  CHECK(t->scheduled_us == 2);
  CHECK(t->running_us == 3);
  CHECK(t->finished_us == 4);
  CHECK(t->payload.empty());  // freed once ended
  CHECK(t->payload_bytes == 1);
  CHECK(table.CountInState(dragon::v1::DONE) == 1);
  CHECK(table.CountInState(dragon::v1::PENDING) == 0);
}

TEST_CASE("impossible transitions are refused and change nothing", "[task_table]") {
  TaskTable table;
  TaskId id = table.Add(dragon::v1::PYTHON, "f", 1, 1, "p", 1);
  auto st = table.Transition(id, dragon::v1::RUNNING, 2);  // must be scheduled first
  CHECK(absl::IsFailedPrecondition(st));
  CHECK(table.Find(id)->state == dragon::v1::PENDING);
  REQUIRE(table.Transition(id, dragon::v1::CANCELLED, 3).ok());
  CHECK_FALSE(table.Transition(id, dragon::v1::SCHEDULED, 4).ok());
  CHECK_FALSE(table.Transition(id, dragon::v1::DONE, 4).ok());
  CHECK(table.CountInState(dragon::v1::CANCELLED) == 1);
  CHECK(absl::IsNotFound(table.Transition(99, dragon::v1::DONE, 1)));
}

TEST_CASE("a scheduled task can go back to pending when its node is lost", "[task_table]") {
  TaskTable table;
  TaskId id = table.Add(dragon::v1::PYTHON, "f", 1, 1, "p", 1);
  REQUIRE(table.Transition(id, dragon::v1::SCHEDULED, 2).ok());
  table.Find(id)->agent = 3;
  REQUIRE(table.Transition(id, dragon::v1::PENDING, 5).ok());
  CHECK(table.Find(id)->agent == kNoAgent);
  CHECK(table.Find(id)->scheduled_us == 0);
  CHECK(table.Find(id)->payload == "p");  // still needed to run it again
}

TEST_CASE("list filters by state, newest first, with a limit", "[task_table]") {
  TaskTable table;
  for (int i = 0; i < 5; ++i) table.Add(dragon::v1::PYTHON, "f", 1, i, "p", i);
  REQUIRE(table.Transition(2, dragon::v1::CANCELLED, 9).ok());
  uint64_t total = 0;
  auto pending = table.List(dragon::v1::PENDING, 2, &total);
  CHECK(total == 4);
  REQUIRE(pending.size() == 2);
  CHECK(pending[0]->id == 5);
  CHECK(pending[1]->id == 4);
  auto all = table.List(dragon::v1::TASK_STATE_UNSPECIFIED, 100, &total);
  CHECK(total == 5);
  CHECK(all.size() == 5);
}

TEST_CASE("live tasks of a session", "[task_table]") {
  TaskTable table;
  table.Add(dragon::v1::PYTHON, "f", 1, 0, "p", 0);
  table.Add(dragon::v1::PYTHON, "f", 2, 0, "p", 0);
  table.Add(dragon::v1::PYTHON, "f", 1, 1, "p", 0);
  REQUIRE(table.Transition(1, dragon::v1::CANCELLED, 1).ok());
  CHECK(table.LiveTasksOfSession(1) == std::vector<TaskId>{3});
  CHECK(table.LiveTasksOfSession(2) == std::vector<TaskId>{2});
}

}  // namespace
}  // namespace dragon::daemon
