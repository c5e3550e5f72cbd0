#include "daemon/scheduler.h"

#include <catch2/catch.hpp>
#include <set>

namespace dragon::daemon {
namespace {

auto kAll = [](TaskId) { return true; };

TEST_CASE("nothing is assigned without agents", "[scheduler]") {
  Scheduler s(1);
  s.Enqueue(1);
  CHECK(s.Assign(kAll).empty());
  CHECK(s.queued() == 1);
}

TEST_CASE("an agent gets workers * (1 + prefetch) tasks at most", "[scheduler]") {
  Scheduler s(1);
  s.AddAgent(0, 2);
  for (TaskId t = 1; t <= 10; ++t) s.Enqueue(t);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 4);
  CHECK(a[0].task == 1);
  CHECK(a[3].task == 4);
  CHECK(s.queued() == 6);
  s.Release(0);
  auto b = s.Assign(kAll);
  REQUIRE(b.size() == 1);
  CHECK(b[0].task == 5);
}

TEST_CASE("tasks spread over agents by load", "[scheduler]") {
  Scheduler s(0);
  s.AddAgent(0, 2);
  s.AddAgent(1, 2);
  for (TaskId t = 1; t <= 4; ++t) s.Enqueue(t);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 4);
  int on0 = 0;
  for (auto& x : a) on0 += x.agent == 0;
  CHECK(on0 == 2);
}

TEST_CASE("tasks cancelled while queued are dropped", "[scheduler]") {
  Scheduler s(0);
  s.AddAgent(0, 1);
  s.Enqueue(1);
  s.Enqueue(2);
  auto a = s.Assign([](TaskId t) { return t != 1; });
  REQUIRE(a.size() == 1);
  CHECK(a[0].task == 2);
  CHECK(s.queued() == 0);
}

TEST_CASE("re-queued tasks go first; removed agents get nothing", "[scheduler]") {
  Scheduler s(0);
  s.AddAgent(0, 1);
  s.AddAgent(1, 1);
  s.Enqueue(5);
  s.Requeue(3);
  s.RemoveAgent(0);
  auto a = s.Assign(kAll);
  REQUIRE(a.size() == 1);
  CHECK(a[0].task == 3);
  CHECK(a[0].agent == 1);
  CHECK(s.capacity(0) == 0);
}

}  // namespace
}  // namespace dragon::daemon
