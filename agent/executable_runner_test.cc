// ExecutableRunner with real programs (/bin/true, sh, sleep).
#include "agent/executable_runner.h"

#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace dragon::agent {
namespace {

int64_t Now() { return absl::ToUnixMicros(absl::Now()); }

v1::TaskAssignment Task(uint64_t id, std::vector<std::string> argv,
                        std::function<void(v1::ExecutableSpec*)> more = nullptr) {
  v1::ExecutableSpec spec;
  for (auto& a : argv) spec.add_argv(a);
  if (more) more(&spec);
  v1::TaskAssignment t;
  t.set_task_id(id);
  t.set_kind(v1::EXECUTABLE);
  t.set_payload(spec.SerializeAsString());
  t.set_cwd("/tmp");
  return t;
}

// Polls like the pool thread does until `id` ends (or the test times out).
ExecutableOutcome RunUntilDone(ExecutableRunner* runner, uint64_t id, int timeout_ms = 10000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    std::vector<pollfd> fds;
    runner->AppendPollFds(&fds);
    int wait_ms = 100;
    if (auto wake = runner->NextWakeUs()) {
      wait_ms = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(100, (*wake - Now()) / 1000 + 1)));
    }
    poll(fds.data(), fds.size(), wait_ms);
    for (auto& o : runner->Collect()) {
      if (o.task_id == id) return o;
    }
  }
  FAIL("task " << id << " did not end within " << timeout_ms << " ms");
  return {};
}

v1::ExecutableResult Parse(const ExecutableOutcome& o) {
  v1::ExecutableResult r;
  REQUIRE(r.ParseFromString(o.data));
  return r;
}

// Running or stopped; a zombie (killed, not yet reaped by whoever inherited
// it) counts as dead.
bool Alive(pid_t pid) {
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z' &&
         line[paren + 2] != 'X';
}

TEST_CASE("/bin/true: OK, exit 0") {
  ExecutableRunner runner(&Now);
  auto pid = runner.Start(Task(1, {"/bin/true"}));
  REQUIRE(pid.ok());
  auto o = RunUntilDone(&runner, 1);
  CHECK(o.outcome == v1::OK);
  CHECK(o.pid == *pid);
  CHECK(o.error.empty());
  auto r = Parse(o);
  CHECK(r.exit_code() == 0);
  CHECK(r.signal() == 0);
  CHECK(r.wall_us() >= 0);
  CHECK(runner.running() == 0);
}

TEST_CASE("a non-zero exit is APP_EXCEPTION with both output tails") {
  ExecutableRunner runner(&Now);
  // Found through PATH.
  REQUIRE(runner.Start(Task(2, {"sh", "-c", "echo hi; echo oops >&2; exit 3"})).ok());
  auto o = RunUntilDone(&runner, 2);
  CHECK(o.outcome == v1::APP_EXCEPTION);
  CHECK_THAT(o.error, Catch::Contains("'sh'") && Catch::Contains("exited with code 3"));
  auto r = Parse(o);
  CHECK(r.exit_code() == 3);
  CHECK(r.stdout_tail() == "hi\n");
  CHECK(r.stderr_tail() == "oops\n");
  CHECK(r.stdout_bytes() == 3);
}

TEST_CASE("env is added, cwd defaults to the task's and can be overridden") {
  ExecutableRunner runner(&Now);
  REQUIRE(runner.Start(Task(3, {"sh", "-c", "echo $DRAGON_T_VAR; pwd"}, [](auto* s) {
                         (*s->mutable_env())["DRAGON_T_VAR"] = "value-1";
                       })).ok());
  auto r = Parse(RunUntilDone(&runner, 3));
  CHECK(r.stdout_tail() == "value-1\n/tmp\n");
  REQUIRE(runner.Start(Task(4, {"pwd"}, [](auto* s) { s->set_cwd("/"); })).ok());
  CHECK(Parse(RunUntilDone(&runner, 4)).stdout_tail() == "/\n");
}

TEST_CASE("what cannot start names argv[0] and the errno text") {
  ExecutableRunner runner(&Now);
  auto missing = runner.Start(Task(5, {"dragon-no-such-binary-xyz"}));
  REQUIRE(!missing.ok());
  CHECK_THAT(std::string(missing.status().message()),
             Catch::Contains("cannot execute 'dragon-no-such-binary-xyz': No such file or directory"));
  auto abs_missing = runner.Start(Task(6, {"/nonexistent/prog"}));
  REQUIRE(!abs_missing.ok());
  CHECK_THAT(std::string(abs_missing.status().message()),
             Catch::Contains("'/nonexistent/prog': No such file or directory"));
  CHECK(!runner.Start(Task(7, {})).ok());

  // A working directory that does not exist is found in the child.
  REQUIRE(runner.Start(Task(8, {"/bin/true"}, [](auto* s) { s->set_cwd("/no/such/dir"); })).ok());
  auto o = RunUntilDone(&runner, 8);
  CHECK(o.outcome == v1::SYSTEM_ERROR);
  CHECK_THAT(o.error, Catch::Contains("'/bin/true'") && Catch::Contains("working directory") &&
                          Catch::Contains("No such file or directory"));

  // Not executable: exec fails in the child (access() said yes for root, or no).
  char tmpl[] = "/tmp/dragon-exe-test-XXXXXX";
  int fd = mkstemp(tmpl);
  REQUIRE(fd >= 0);
  (void)!write(fd, "\x7f\x45LFgarbage", 11);
  close(fd);
  chmod(tmpl, 0755);
  auto bad = runner.Start(Task(9, {tmpl}));
  if (bad.ok()) {
    auto ob = RunUntilDone(&runner, 9);
    CHECK(ob.outcome == v1::SYSTEM_ERROR);
    CHECK_THAT(ob.error, Catch::Contains(absl::StrCat("cannot execute '", tmpl, "'")));
  }
  unlink(tmpl);
}

TEST_CASE("the tails keep only the last capture_limit_bytes") {
  ExecutableRunner runner(&Now);
  REQUIRE(runner.Start(Task(10, {"sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line-$i; "
                                             "i=$((i+1)); done"},
                            [](auto* s) { s->set_capture_limit_bytes(100); }))
              .ok());
  auto r = Parse(RunUntilDone(&runner, 10));
  CHECK(r.stdout_tail().size() == 100);
  CHECK(absl::EndsWith(r.stdout_tail(), "line-1999\n"));
  CHECK(r.stdout_bytes() > 10000);

  TailBuffer tail(4);
  tail.Append("ab", 2);
  tail.Append("cdefg", 5);
  tail.Append("h", 1);
  CHECK(tail.total() == 8);
  CHECK(tail.Take() == "efgh");
}

TEST_CASE("a timeout kills the process group") {
  ExecutableRunner runner(&Now);
  const auto start = std::chrono::steady_clock::now();
  REQUIRE(runner.Start(Task(11, {"sleep", "30"}, [](auto* s) { s->set_timeout_s(1); })).ok());
  auto o = RunUntilDone(&runner, 11);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  CHECK(o.outcome == v1::APP_EXCEPTION);
  CHECK_THAT(o.error, Catch::Contains("timed out after 1 s"));
  auto r = Parse(o);
  CHECK(r.timed_out());
  CHECK(r.signal() == SIGKILL);
  CHECK(r.exit_code() == -1);
}

TEST_CASE("Kill takes the whole group, and nothing outlives a finished task") {
  ExecutableRunner runner(&Now);
  // The background sleep prints its pid so the test can check it is gone.
  REQUIRE(runner.Start(Task(12, {"sh", "-c", "sleep 60 & echo $!; sleep 60"})).ok());
  // Wait until the pid was printed (the output is only read on Collect).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  (void)runner.Collect();
  runner.Kill(12);
  auto o = RunUntilDone(&runner, 12);
  CHECK(o.killed_by_request);
  auto r = Parse(o);
  CHECK(r.signal() == SIGKILL);
  int bg = 0;
  REQUIRE(absl::SimpleAtoi(absl::StripSuffix(r.stdout_tail(), "\n"), &bg));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(!Alive(bg));  // killed (and reaped by init: it was reparented)
  CHECK(!Alive(o.pid));

  REQUIRE(runner.Start(Task(13, {"sh", "-c", "sleep 60 & echo $!"})).ok());
  auto o2 = RunUntilDone(&runner, 13);
  CHECK(o2.outcome == v1::OK);
  int bg2 = 0;
  REQUIRE(absl::SimpleAtoi(absl::StripSuffix(Parse(o2).stdout_tail(), "\n"), &bg2));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(!Alive(bg2));
}

TEST_CASE("the destructor kills and reaps what still runs") {
  pid_t pid = 0;
  {
    ExecutableRunner runner(&Now);
    auto started = runner.Start(Task(14, {"sleep", "60"}));
    REQUIRE(started.ok());
    pid = *started;
  }
  CHECK(!Alive(pid));
}

}  // namespace
}  // namespace dragon::agent
