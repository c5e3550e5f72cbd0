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

TEST_CASE("a task's data agent costs no memory", "[task_table]") {
  // data_agent sits in the padding after infra_attempts; a deep queue costs
  // sizeof(Task) per task (bench/HEAD_SCALE.md), which it must not grow.
  CHECK(sizeof(Task) <= 176);
  Task task;
  CHECK(task.data_agent == kNoAgent);
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

// --- retention (--keep-finished) -------------------------------------------

constexpr uint64_t kChunk = kTaskChunkSize;

// Adds `count` tasks of `session`; returns the first id.
TaskId AddTasks(TaskTable* table, uint64_t count, SessionId session = 1) {
  TaskId first = 0;
  for (uint64_t i = 0; i < count; ++i) {
    TaskId id = table->Add(dragon::v1::PYTHON, "f", session, i, "p", 0);
    if (first == 0) first = id;
  }
  return first;
}

void End(TaskTable* table, TaskId id, TaskState state = dragon::v1::DONE) {
  REQUIRE(table->Transition(id, dragon::v1::SCHEDULED, 1).ok());
  REQUIRE(table->Transition(id, state, 1).ok());
}

void Finish(TaskTable* table, TaskId first, uint64_t count,
            TaskState state = dragon::v1::DONE) {
  for (TaskId id = first; id < first + count; ++id) End(table, id, state);
}

TEST_CASE("--keep-finished values are checked", "[task_table][retention]") {
  CHECK(ValidateKeepFinished(-1).ok());
  CHECK(ValidateKeepFinished(0).ok());
  CHECK(ValidateKeepFinished(kDefaultKeepFinished).ok());
  auto bad = ValidateKeepFinished(-2);
  CHECK(absl::IsInvalidArgument(bad));
  CHECK(bad.message() ==
        "--keep-finished -2 is not valid: use a number of finished tasks to keep (0 or more), "
        "or -1 to keep all");
}

TEST_CASE("retention forgets the oldest finished chunks and no more", "[task_table][retention]") {
  TaskTable table(/*keep_finished=*/kChunk + 10);
  AddTasks(&table, 4 * kChunk);
  Finish(&table, 1, 4 * kChunk);
  table.ForgetOldFinished();
  // 4 chunks finished; keeping >= kChunk + 10 means 2 stay (3 would be
  // needed only if one chunk fell below the limit).
  CHECK(table.retained() == 2 * kChunk);
  CHECK(table.CountInState(dragon::v1::DONE) == 2 * kChunk);
  CHECK(table.ForgottenInState(dragon::v1::DONE) == 2 * kChunk);
  CHECK(table.size() == 4 * kChunk);
  CHECK(table.Find(1) == nullptr);
  CHECK(table.Find(2 * kChunk) == nullptr);
  CHECK(table.WasForgotten(2 * kChunk));
  REQUIRE(table.Find(2 * kChunk + 1) != nullptr);
  CHECK(table.Find(2 * kChunk + 1)->state == dragon::v1::DONE);
  CHECK_FALSE(table.WasForgotten(2 * kChunk + 1));
  CHECK_FALSE(table.WasForgotten(4 * kChunk + 1));  // never issued
  CHECK_FALSE(table.WasForgotten(0));
  CHECK(absl::IsNotFound(table.Transition(1, dragon::v1::DONE, 2)));
  // Idempotent: nothing more to free.
  table.ForgetOldFinished();
  CHECK(table.retained() == 2 * kChunk);
}

TEST_CASE("the partly filled last chunk is never forgotten", "[task_table][retention]") {
  TaskTable table(/*keep_finished=*/0);
  AddTasks(&table, kChunk + 5);
  Finish(&table, 1, kChunk + 5);
  table.ForgetOldFinished();
  CHECK(table.retained() == 5);
  CHECK(table.Find(kChunk + 1) != nullptr);
  // Filling it up: once all of it has finished, it goes too.
  TaskId more = AddTasks(&table, kChunk - 5);
  table.ForgetOldFinished();
  CHECK(table.retained() == kChunk);
  Finish(&table, more, kChunk - 5, dragon::v1::FAILED);
  table.ForgetOldFinished();
  CHECK(table.retained() == 0);
  CHECK(table.ForgottenInState(dragon::v1::DONE) == kChunk + 5);
  CHECK(table.ForgottenInState(dragon::v1::FAILED) == kChunk - 5);
}

TEST_CASE("a live task pins its chunk but not younger ones", "[task_table][retention]") {
  TaskTable table(/*keep_finished=*/0);
  AddTasks(&table, 3 * kChunk);
  const TaskId long_runner = 7;
  for (TaskId id = 1; id <= 3 * kChunk; ++id) {
    if (id == long_runner) {
      REQUIRE(table.Transition(id, dragon::v1::SCHEDULED, 1).ok());
      REQUIRE(table.Transition(id, dragon::v1::RUNNING, 1).ok());
    } else {
      End(&table, id);
    }
  }
  table.ForgetOldFinished();
  CHECK(table.retained() == kChunk);  // chunk 0 only
  REQUIRE(table.Find(long_runner) != nullptr);
  CHECK(table.Find(long_runner)->state == dragon::v1::RUNNING);
  CHECK(table.Find(1) != nullptr);  // same chunk as the runner
  CHECK(table.Find(kChunk + 1) == nullptr);
  CHECK(table.Find(3 * kChunk) == nullptr);
  // Once it ends, its chunk goes as well.
  REQUIRE(table.Transition(long_runner, dragon::v1::DONE, 2).ok());
  table.ForgetOldFinished();
  CHECK(table.retained() == 0);
  CHECK(table.ForgottenInState(dragon::v1::DONE) == 3 * kChunk);
}

TEST_CASE("list and live tasks skip forgotten chunks", "[task_table][retention]") {
  TaskTable table(/*keep_finished=*/0);
  // Session 2 has a live task in chunk 0 and in chunk 2; chunk 1 finishes.
  AddTasks(&table, 3 * kChunk);
  for (TaskId id = 1; id <= 3 * kChunk; ++id) {
    if (id == 3 || id == 2 * kChunk + 4) continue;
    End(&table, id);
  }
  TaskId a = table.Add(dragon::v1::PYTHON, "f", 2, 0, "p", 0);
  table.ForgetOldFinished();
  CHECK(table.Find(kChunk + 1) == nullptr);
  uint64_t total = 0;
  auto all = table.List(dragon::v1::TASK_STATE_UNSPECIFIED, 1000000, &total);
  CHECK(total == 2 * kChunk + 1);
  REQUIRE(all.size() == 2 * kChunk + 1);
  CHECK(all.front()->id == a);
  CHECK(all[kChunk]->id == 2 * kChunk + 1);  // the oldest of chunk 2 ...
  CHECK(all[kChunk + 1]->id == kChunk);      // ... then straight to chunk 0
  CHECK(all.back()->id == 1);
  auto pending = table.List(dragon::v1::PENDING, 10, &total);
  CHECK(total == 3);
  REQUIRE(pending.size() == 3);
  CHECK(pending[0]->id == a);
  CHECK(pending[1]->id == 2 * kChunk + 4);
  CHECK(pending[2]->id == 3);
  CHECK(table.LiveTasksOfSession(1) == std::vector<TaskId>{3, 2 * kChunk + 4});
  CHECK(table.LiveTasksOfSession(2) == std::vector<TaskId>{a});
}

TEST_CASE("unbounded retention never forgets", "[task_table][retention]") {
  TaskTable table(kKeepAllFinished);
  AddTasks(&table, 3 * kChunk);
  Finish(&table, 1, 3 * kChunk);
  table.ForgetOldFinished();
  CHECK(table.retained() == 3 * kChunk);
  CHECK(table.Find(1) != nullptr);
}

TEST_CASE("names past the interning limit go with their chunk", "[task_table][retention]") {
  TaskTable table(/*keep_finished=*/0);
  for (uint64_t i = 0; i < 2 * kChunk + 1; ++i) {
    table.Add(dragon::v1::PYTHON, "name-" + std::to_string(i), 1, i, "p", 0);
  }
  Finish(&table, 1, 2 * kChunk);
  table.ForgetOldFinished();
  REQUIRE(table.Find(2 * kChunk + 1) != nullptr);
  CHECK(table.Find(2 * kChunk + 1)->name_or_empty() == "name-" + std::to_string(2 * kChunk));
  CHECK(table.retained() == 1);
}

}  // namespace
}  // namespace dragon::daemon
