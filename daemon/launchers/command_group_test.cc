// CommandGroup with real local processes: a command's end fails its nodes
// (with its output's tail), Stop ends what still runs, and nothing that ends
// once Stop was called counts as a failure.
#include "daemon/launchers/command_group.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <map>
#include <mutex>

#include "absl/time/clock.h"
#include "daemon/launchers/launcher_test_util.h"

namespace dragon::daemon {
namespace {

GroupCommand Command(const std::string& label, const std::string& script,
                     std::vector<std::string> nodes, const std::string& log) {
  GroupCommand c;
  c.label = label;
  c.child.argv = {"/bin/sh", "-c", script};
  c.child.log_path = log;
  c.nodes = std::move(nodes);
  return c;
}

TEST_CASE("a command that ends fails every node it carried, with its output") {
  const std::string dir = testutil::MakeTempDir("command_group");
  testutil::RecordingObserver observer;
  CommandGroup group;
  std::vector<GroupCommand> commands;
  commands.push_back(Command("the step", "echo 'srun: error: n2: task 1: Exited'; exit 3",
                             {"n1", "n2"}, dir + "/step.log"));
  commands.push_back(Command("the other", "exec sleep 60", {"n3"}, dir + "/other.log"));
  REQUIRE(group.Start(std::move(commands), &observer).ok());
  for (int i = 0; i < 300 && observer.Failed() < 2; ++i) absl::SleepFor(absl::Milliseconds(10));
  {
    std::lock_guard<std::mutex> l(observer.mu);
    REQUIRE(observer.failed.size() == 2);
    CHECK(observer.failed["n1"].find("the step") != std::string::npos);
    CHECK(observer.failed["n1"].find("exited with code 3") != std::string::npos);
    CHECK(observer.failed["n2"].find("task 1: Exited") != std::string::npos);
    CHECK(observer.failed.count("n3") == 0);
    CHECK(observer.problem.find("exited with code 3") != std::string::npos);
  }
  CHECK_FALSE(group.AllEnded());
  const absl::Time t0 = absl::Now();
  group.Stop(absl::Milliseconds(100));  // sleep 60 ends on the first SIGTERM
  CHECK(absl::Now() - t0 < absl::Seconds(3));
  CHECK(group.AllEnded());
  std::lock_guard<std::mutex> l(observer.mu);
  CHECK(observer.failed.count("n3") == 0);  // ended by Stop: not a failure
}

TEST_CASE("a command that ignores SIGTERM is killed; a custom end is used") {
  const std::string dir = testutil::MakeTempDir("command_group");
  testutil::RecordingObserver observer;
  CommandGroup group;
  std::vector<GroupCommand> commands;
  commands.push_back(Command("stubborn", "trap '' TERM; while :; do sleep 0.05; done", {"n1"},
                             dir + "/s.log"));
  REQUIRE(group.Start(std::move(commands), &observer).ok());
  bool custom = false;
  group.Stop(absl::Milliseconds(50), [&custom](const GroupCommand&, ChildProcess* p) {
    custom = true;
    p->Signal(SIGKILL);
  });
  CHECK(custom);
  CHECK(group.AllEnded());
  CHECK(observer.Failed() == 0);
}

TEST_CASE("a command that cannot start names itself; those before it are ended") {
  const std::string dir = testutil::MakeTempDir("command_group");
  testutil::RecordingObserver observer;
  CommandGroup group;
  std::vector<GroupCommand> commands;
  commands.push_back(Command("first", "exec sleep 60", {"n1"}, dir + "/a.log"));
  GroupCommand missing;
  missing.label = "pbsdsh to n2";
  missing.child.argv = {"/no/such/pbsdsh", "-h", "n2"};
  missing.nodes = {"n2"};
  commands.push_back(missing);
  absl::Status s = group.Start(std::move(commands), &observer);
  REQUIRE_FALSE(s.ok());
  CHECK(std::string(s.message()).find("cannot start pbsdsh to n2") != std::string::npos);
  CHECK(group.AllEnded());
}

}  // namespace
}  // namespace dragon::daemon
