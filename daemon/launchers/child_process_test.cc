#include "daemon/launchers/child_process.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

namespace dragon::daemon {
namespace {

std::string TempPath(const char* name) {
  const char* base = getenv("TEST_TMPDIR");
  return std::string(base ? base : "/tmp") + "/" + name + "-" + std::to_string(getpid());
}

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST_CASE("a child gets its environment and stdin, and its output goes to the log") {
  const std::string log = TempPath("child.log");
  unlink(log.c_str());
  ChildSpec spec;
  spec.argv = {"sh", "-c", "read -r line; echo \"got $line and $DRAGON_TEST_VAR\""};
  spec.env = {{"DRAGON_TEST_VAR", "v1"}};
  spec.stdin_data = "secret\n";
  spec.log_path = log;
  auto child = ChildProcess::Start(spec);
  REQUIRE(child.ok());
  auto how = child->WaitFor(absl::Seconds(10));
  REQUIRE(how.has_value());
  CHECK(*how == "exited with code 0");
  CHECK(Read(log) == "got secret and v1\n");
  unlink(log.c_str());
}

TEST_CASE("a command that cannot run is an error naming it") {
  ChildSpec spec;
  spec.argv = {"/nonexistent/dragon-agent"};
  auto child = ChildProcess::Start(spec);
  REQUIRE_FALSE(child.ok());
  CHECK(std::string(child.status().message()).find("/nonexistent/dragon-agent") !=
        std::string::npos);
}

TEST_CASE("Terminate ends a child that ignores SIGTERM with SIGKILL") {
  ChildSpec spec;
  spec.argv = {"sh", "-c", "trap '' TERM; sleep 30"};
  auto child = ChildProcess::Start(spec);
  REQUIRE(child.ok());
  CHECK_FALSE(child->TryReap().has_value());
  absl::SleepFor(absl::Milliseconds(100));  // let the shell set its trap
  CHECK(child->Terminate(absl::Milliseconds(300)) == "was killed by signal 9");
  CHECK(child->exit_code() == -1);
}

TEST_CASE("RunCommand captures output and exit code, and times out") {
  auto r = RunCommand({"sh", "-c", "echo out; echo err >&2; exit 3"}, {}, absl::Seconds(10));
  REQUIRE(r.ok());
  CHECK(r->exit_code == 3);
  CHECK(r->out == "out\n");
  CHECK(r->err == "err\n");
  auto slow = RunCommand({"sleep", "30"}, {}, absl::Milliseconds(200));
  REQUIRE(slow.ok());
  CHECK(slow->timed_out);
}

TEST_CASE("ShellQuote survives quotes and spaces") {
  CHECK(ShellQuote("a b") == "'a b'");
  CHECK(ShellQuote("it's") == "'it'\\''s'");
  auto r = RunCommand({"sh", "-c", "printf %s " + ShellQuote("it's a $HOME")}, {},
                      absl::Seconds(10));
  REQUIRE(r.ok());
  CHECK(r->out == "it's a $HOME");
}

}  // namespace
}  // namespace dragon::daemon
