// Real processes (/bin/sh), no doubles: fork/exec, fds 3/4, env, log file,
// kill and exit texts.
#include "agent/worker_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

namespace dragon::agent {
namespace {

std::string TempLog(const char* name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir ? dir : "/tmp") + "/" + name + "-" + std::to_string(getpid());
  unlink(path.c_str());
  return path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Reads from a nonblocking fd until `want` bytes or EOF, for up to 10 s.
std::string ReadSome(int fd, size_t want) {
  std::string out;
  char buf[256];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (out.size() < want && std::chrono::steady_clock::now() < deadline) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n == 0) break;
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  return out;
}

TEST_CASE("exit texts") {
  CHECK(DescribeExit(W_EXITCODE(3, 0)) == "exited with code 3");
  CHECK(DescribeExit(W_EXITCODE(0, SIGKILL)) == "killed by signal 9 SIGKILL");
  CHECK(DescribeExit(W_EXITCODE(0, SIGSEGV) | 0x80) == "killed by signal 11 SIGSEGV, core dumped");
}

TEST_CASE("fd 3 carries input, fd 4 output, 1/2 go to the log, env is set") {
  WorkerSpec spec;
  spec.log_path = TempLog("worker-io");
  // Echo what arrives on fd 3 to fd 4, with the env var in front.
  spec.argv = {"/bin/sh", "-c",
               "echo to-stdout; echo to-stderr >&2; read line <&3; "
               "printf '%s:%s' \"$DRAGON_TEST_VAR\" \"$line\" >&4"};
  spec.env = {{"DRAGON_TEST_VAR", "value-42"}};
  auto proc = WorkerProcess::Start(spec);
  REQUIRE(proc.ok());
  WorkerProcess& p = **proc;
  CHECK(p.pid() > 0);
  REQUIRE(write(p.to_worker_fd(), "hello\n", 6) == 6);
  CHECK(ReadSome(p.from_worker_fd(), 100) == "value-42:hello");
  CHECK(DescribeExit(p.Wait()) == "exited with code 0");
  const std::string log = ReadFile(spec.log_path);
  CHECK_THAT(log, Catch::Contains("to-stdout") && Catch::Contains("to-stderr"));
}

TEST_CASE("the worker sees only fds 0-4 open") {
  WorkerSpec spec;
  spec.log_path = TempLog("worker-fds");
  spec.argv = {"/bin/sh", "-c", "ls /proc/self/fd | sort -n | tr '\\n' ' ' >&4"};
  auto proc = WorkerProcess::Start(spec);
  REQUIRE(proc.ok());
  // ls itself opens one fd for the directory it lists (the highest number).
  const std::string fds = ReadSome((*proc)->from_worker_fd(), 100);
  CHECK_THAT(fds, Catch::StartsWith("0 1 2 3 4 "));
  CHECK(fds.size() <= std::string("0 1 2 3 4 5 ").size());
}

TEST_CASE("exit code and SIGKILL are reported, and EOF on fd 4 follows death") {
  WorkerSpec spec;
  spec.log_path = TempLog("worker-exit");
  spec.argv = {"/bin/sh", "-c", "exit 3"};
  auto a = WorkerProcess::Start(spec);
  REQUIRE(a.ok());
  CHECK(ReadSome((*a)->from_worker_fd(), 1).empty());  // EOF
  CHECK(DescribeExit((*a)->Wait()) == "exited with code 3");

  spec.argv = {"/bin/sh", "-c", "sleep 30"};
  auto b = WorkerProcess::Start(spec);
  REQUIRE(b.ok());
  CHECK_FALSE((*b)->TryReap().has_value());
  REQUIRE((*b)->Signal(SIGKILL).ok());
  CHECK(DescribeExit((*b)->Wait()) == "killed by signal 9 SIGKILL");
  CHECK((*b)->Signal(SIGKILL).ok());  // after reaping: a no-op, never another process
}

TEST_CASE("a missing program exits 127 with the reason in the log") {
  WorkerSpec spec;
  spec.log_path = TempLog("worker-missing");
  spec.argv = {"/nonexistent/python3", "-m", "dragon_parsl.worker"};
  auto proc = WorkerProcess::Start(spec);
  REQUIRE(proc.ok());
  CHECK(DescribeExit((*proc)->Wait()) == "exited with code 127");
  CHECK_THAT(ReadFile(spec.log_path), Catch::Contains("cannot execute /nonexistent/python3"));
}

TEST_CASE("destroying a running WorkerProcess kills and reaps it") {
  WorkerSpec spec;
  spec.log_path = TempLog("worker-dtor");
  spec.argv = {"/bin/sh", "-c", "sleep 30"};
  pid_t pid;
  {
    auto proc = WorkerProcess::Start(spec);
    REQUIRE(proc.ok());
    pid = (*proc)->pid();
  }
  // Reaped: the pid is no longer our child.
  CHECK(waitpid(pid, nullptr, WNOHANG) == -1);
  CHECK(kill(pid, 0) == -1);
}

TEST_CASE("an unwritable log is an error, not a crash") {
  WorkerSpec spec;
  spec.log_path = "/nonexistent-dir/worker.log";
  spec.argv = {"/bin/true"};
  auto proc = WorkerProcess::Start(spec);
  REQUIRE_FALSE(proc.ok());
  CHECK_THAT(std::string(proc.status().message()), Catch::Contains("/nonexistent-dir/worker.log"));
}

}  // namespace
}  // namespace dragon::agent
