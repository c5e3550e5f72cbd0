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

TEST_CASE("many tasks: stable pointers across chunks, names shared", "[task_table][scale]") {
  TaskTable table;
  TaskId first = table.Add(dragon::v1::PYTHON, "app", 1, 0, "p", 0);
  const Task* first_ptr = table.Find(first);
  for (int i = 1; i < 20000; ++i) {
    table.Add(dragon::v1::PYTHON, i % 2 ? "app" : "other_app_with_a_long_name", 1, i, "p", i);
  }
  CHECK(table.size() == 20000);
  CHECK(table.Find(first) == first_ptr);  // growing never moves a task
  CHECK(table.Find(4096)->id == 4096);
  CHECK(table.Find(4097)->id == 4097);
  CHECK(table.Find(20000)->client_ref == 19999);
  CHECK(table.Find(20001) == nullptr);
  CHECK(table.Find(2)->name == table.Find(4)->name);  // one string for all "app" tasks
  dragon::v1::TaskInfo info;
  FillTaskInfo(*table.Find(3), "n", &info);
  CHECK(info.name() == "other_app_with_a_long_name");
  TaskId unnamed = table.Add(dragon::v1::PYTHON, "", 1, 0, "p", 0);
  FillTaskInfo(*table.Find(unnamed), "n", &info);
  CHECK(info.name().empty());
}

TEST_CASE("past the interning limit every name is still kept right", "[task_table][scale]") {
  TaskTable table;
  for (int i = 0; i < 6000; ++i) table.Add(dragon::v1::PYTHON, "name-" + std::to_string(i), 1, i, "p", 0);
  for (TaskId id : {TaskId{1}, TaskId{4096}, TaskId{4097}, TaskId{6000}}) {
    dragon::v1::TaskInfo info;
    FillTaskInfo(*table.Find(id), "n", &info);
    CHECK(info.name() == "name-" + std::to_string(id - 1));
  }
}

TEST_CASE("list stops after limit and still reports the total", "[task_table][scale]") {
  TaskTable table;
  for (int i = 0; i < 10000; ++i) table.Add(dragon::v1::PYTHON, "f", 1, i, "p", i);
  for (TaskId id = 1; id <= 10; ++id) REQUIRE(table.Transition(id, dragon::v1::CANCELLED, 1).ok());
  uint64_t total = 0;
  auto cancelled = table.List(dragon::v1::CANCELLED, 3, &total);
  CHECK(total == 10);
  REQUIRE(cancelled.size() == 3);
  CHECK(cancelled[0]->id == 10);  // newest first, found at the far end
  CHECK(cancelled[2]->id == 8);
  auto all_cancelled = table.List(dragon::v1::CANCELLED, 100, &total);
  CHECK(all_cancelled.size() == 10);
  CHECK(all_cancelled.back()->id == 1);
  auto pending = table.List(dragon::v1::PENDING, 5, &total);
  CHECK(total == 9990);
  REQUIRE(pending.size() == 5);
  CHECK(pending[0]->id == 10000);
  auto none = table.List(dragon::v1::RUNNING, 5, &total);
  CHECK(total == 0);
  CHECK(none.empty());
  auto everything = table.List(dragon::v1::TASK_STATE_UNSPECIFIED, 2, &total);
  CHECK(total == 10000);
  CHECK(everything.size() == 2);
}

TEST_CASE("live tasks of a session among many sessions", "[task_table][scale]") {
  TaskTable table;
  for (int i = 0; i < 9000; ++i) table.Add(dragon::v1::PYTHON, "f", 1 + i % 3, i, "p", 0);
  // Session 1 holds ids 1, 4, 7, ...; end all but the last two.
  std::vector<TaskId> mine;
  for (TaskId id = 1; id <= 9000; id += 3) mine.push_back(id);
  for (size_t i = 0; i + 2 < mine.size(); ++i) {
    REQUIRE(table.Transition(mine[i], dragon::v1::SCHEDULED, 1).ok());
    REQUIRE(table.Transition(mine[i], dragon::v1::DONE, 2).ok());
  }
  CHECK(table.LiveTasksOfSession(1) == std::vector<TaskId>{mine[mine.size() - 2], mine.back()});
  CHECK(table.LiveTasksOfSession(2).size() == 3000);
  CHECK(table.LiveTasksOfSession(7).empty());
  REQUIRE(table.Transition(mine[mine.size() - 2], dragon::v1::CANCELLED, 3).ok());
  REQUIRE(table.Transition(mine.back(), dragon::v1::CANCELLED, 3).ok());
  CHECK(table.LiveTasksOfSession(1).empty());
  // A session that had none live gets new tasks: they are found.
  TaskId again = table.Add(dragon::v1::PYTHON, "f", 1, 0, "p", 0);
  CHECK(table.LiveTasksOfSession(1) == std::vector<TaskId>{again});
}

}  // namespace
}  // namespace dragon::daemon
