// MpiLauncher with real MPICH (mpicc, mpiexec.hydra) on this node: a
// single-node grant.mpi built here (hosts = [this host]), as the head's gang
// placement would send it. Programs are compiled by the test with mpicc.
#include "agent/mpi_launcher.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "agent/mpi_job_marker.h"
#include "common/host.h"

namespace dragon::agent {
namespace {

int64_t Now() { return absl::ToUnixMicros(absl::Now()); }

std::string TestDir() {
  const char* t = getenv("TEST_TMPDIR");
  static int n = 0;
  std::string dir = absl::StrCat(t != nullptr ? t : "/tmp", "/mpi", getpid(), "-", n++);
  mkdir(dir.c_str(), 0700);
  return dir;
}

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

// The wrapper from the test's runfiles, as an absolute path.
std::string Wrapper() {
  char buf[4096];
  REQUIRE(realpath("agent/dragon-mpi-rank", buf) != nullptr);
  return buf;
}

// Compiles `source` with mpicc once per name; returns the binary's path.
std::string Compile(const std::string& name, const std::string& source) {
  static std::map<std::string, std::string> built;
  if (auto it = built.find(name); it != built.end()) return it->second;
  const std::string dir = TestDir();
  WriteFile(absl::StrCat(dir, "/", name, ".c"), source);
  const std::string exe = absl::StrCat(dir, "/", name);
  const std::string cmd = absl::StrCat("mpicc -O1 -o ", exe, " ", dir, "/", name, ".c 2>&1");
  REQUIRE(system(cmd.c_str()) == 0);
  built[name] = exe;
  return exe;
}

// The talk's factorial: rank r multiplies in r+1; rank 0 reads a scale factor
// from stdin and prints product * scale + bias (argv[1]).
const char kFactorial[] = R"(
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int rank, size; char host[256];
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
  gethostname(host, sizeof host);
  fprintf(stderr, "rank %d of %d on %s\n", rank, size, host);
  long long mine = rank + 1, prod = 1;
  MPI_Reduce(&mine, &prod, 1, MPI_LONG_LONG, MPI_PROD, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    long long scale = 0, bias = argc > 1 ? atoll(argv[1]) : 0;
    if (scanf("%lld", &scale) != 1) { fprintf(stderr, "no scale\n"); MPI_Abort(MPI_COMM_WORLD, 3); }
    printf("%lld\n", prod * scale + bias); fflush(stdout);
  }
  MPI_Finalize();
  return 0;
}
)";

// Rank 1 exits with code 3 after a moment; the others wait in a barrier.
const char kCrash[] = R"(
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int rank; MPI_Init(&argc, &argv); MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  printf("rank %d pid %d\n", rank, (int)getpid()); fflush(stdout);
  if (rank == 1) { usleep(300000); exit(3); }
  MPI_Barrier(MPI_COMM_WORLD);
  sleep(60);
  MPI_Finalize(); return 0;
}
)";

// Every rank sleeps; rank 0 prints first.
const char kSleeper[] = R"(
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int rank; MPI_Init(&argc, &argv); MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) { printf("started\n"); fflush(stdout); }
  sleep(120);
  MPI_Finalize(); return 0;
}
)";

// Rank 0 prints N numbered lines (argv[1]).
const char kChatty[] = R"(
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
  int rank; MPI_Init(&argc, &argv); MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) { int n = atoi(argv[1]); for (int i = 0; i < n; i++) printf("line %06d of some output\n", i); }
  MPI_Finalize(); return 0;
}
)";

MpiLauncherOptions Options(const std::string& run_dir) {
  MpiLauncherOptions o;
  o.node_id = "n1";
  o.host = common::Hostname();
  o.run_dir = run_dir;
  o.run_id = absl::StrCat("test", getpid());
  o.config.kind = MpiLauncherKind::kHydra;
  o.config.mpiexec = "mpiexec.hydra";
  o.config.rank_wrapper = Wrapper();
  o.kill_grace_us = 1'000'000;
  o.failure_grace_us = 1'000'000;
  return o;
}

v1::TaskAssignment Job(uint64_t id, std::vector<std::string> argv, uint32_t ranks,
                       uint32_t timeout_s = 0) {
  v1::ExecutableSpec spec;
  for (auto& a : argv) spec.add_argv(a);
  spec.set_timeout_s(timeout_s);
  v1::TaskAssignment t;
  t.set_task_id(id);
  t.set_kind(v1::EXECUTABLE);
  t.set_payload(spec.SerializeAsString());
  t.set_cwd("/tmp");
  v1::MpiPlacement* mpi = t.mutable_grant()->mutable_mpi();
  mpi->add_hosts(common::Hostname());
  mpi->set_ranks(ranks);
  mpi->set_ranks_per_node(ranks);
  return t;
}

// Drives the launcher like the pool thread, handing frames to `on_frame`,
// until `id` ends; returns its outcome.
ExecutableOutcome RunUntilDone(MpiLauncher* l, uint64_t id, int timeout_ms,
                               const std::function<void(const v1::TaskIOFrame&)>& on_frame = {}) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    std::vector<pollfd> fds;
    l->AppendPollFds(&fds);
    int wait_ms = 50;
    if (auto wake = l->NextWakeUs()) {
      wait_ms = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(50, (*wake - Now()) / 1000 + 1)));
    }
    poll(fds.data(), fds.size(), wait_ms);
    std::vector<ExecutableOutcome> done = l->Collect();
    for (auto& f : l->TakeTaskIO()) {
      if (on_frame) on_frame(f);
    }
    for (auto& o : done) {
      if (o.task_id == id) return o;
    }
  }
  FAIL("MPI job " << id << " did not end within " << timeout_ms << " ms");
  return {};
}

// Pids of this host's processes carrying DRAGON_MPI_TASK=marker.
std::vector<int> Marked(const std::string& marker) {
  std::vector<int> pids;
  const std::string want = absl::StrCat("DRAGON_MPI_TASK=", marker);
  DIR* d = opendir("/proc");
  while (dirent* e = readdir(d)) {
    const int pid = atoi(e->d_name);
    if (pid <= 0) continue;
    const std::string env = Slurp(absl::StrCat("/proc/", pid, "/environ"));
    std::string stat = Slurp(absl::StrCat("/proc/", pid, "/stat"));
    if (stat.find(") Z") != std::string::npos) continue;  // zombie
    size_t start = 0;
    while (start < env.size()) {
      size_t end = env.find('\0', start);
      if (end == std::string::npos) end = env.size();
      if (env.compare(start, end - start, want) == 0) pids.push_back(pid);
      start = end + 1;
    }
  }
  closedir(d);
  return pids;
}

// Waits (briefly) until no process carries the job's marker.
void ExpectNoneLeft(const std::string& marker) {
  std::vector<int> left;
  for (int i = 0; i < 100; ++i) {
    left = Marked(marker);
    if (left.empty()) return;
    usleep(20'000);
  }
  FAIL("processes of the job still running: " << absl::StrJoin(left, ","));
}

v1::MpiJobResult Result(const ExecutableOutcome& o) {
  v1::MpiJobResult r;
  REQUIRE(r.ParseFromString(o.data));
  return r;
}

TEST_CASE("the talk's factorial: 3 ranks, rank 0's stdin and stdout through TaskIO frames") {
  const std::string fact = Compile("fact", kFactorial);
  MpiLauncher l(Options(TestDir()), &Now);
  auto pid = l.Start(Job(11, {fact, "7"}, 3));
  REQUIRE(pid.ok());
  CHECK(l.Owns(11));
  v1::TaskIOFrame open;
  open.set_task_id(11);
  open.set_channel(5);
  open.set_open(true);
  l.OnTaskIO(open);
  v1::TaskIOFrame in;
  in.set_task_id(11);
  in.set_channel(5);
  in.set_data("5\n");
  in.set_eof(true);
  l.OnTaskIO(in);
  std::string out;
  bool started = false, eof = false;
  uint64_t stdin_ack = 0;
  ExecutableOutcome o = RunUntilDone(&l, 11, 30000, [&](const v1::TaskIOFrame& f) {
    CHECK(f.channel() == 5);
    CHECK(f.error().empty());
    if (f.has_started()) {
      started = true;
      CHECK(f.started().ranks_size() == 3);
      CHECK(absl::EndsWith(f.started().ranks(2).stderr_path(), "/tasks/11/rank-2.err"));
    }
    CHECK(f.data_offset() == out.size());
    out += f.data();
    if (f.ack() > stdin_ack) stdin_ack = f.ack();
    if (f.eof()) eof = true;
  });
  CHECK(started);
  CHECK(stdin_ack == 2);
  REQUIRE(o.outcome == v1::OK);
  v1::MpiJobResult r = Result(o);
  CHECK(r.exit_code() == 0);
  CHECK(r.failed_rank() == -1);
  REQUIRE(r.ranks_size() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(r.ranks(i).state() == "exited");
    CHECK(absl::StrContains(Slurp(r.ranks(i).stderr_path()), absl::StrCat("rank ", i, " of 3")));
  }
  // Stdout was streamed: the rest (the end) comes on the next pass.
  for (int i = 0; i < 10 && !eof; ++i) {
    l.Collect();
    for (auto& f : l.TakeTaskIO()) {
      out += f.data();
      eof = eof || f.eof();
    }
    if (!eof) {
      v1::TaskIOFrame ack;
      ack.set_task_id(11);
      ack.set_channel(5);
      ack.set_ack(out.size());
      l.OnTaskIO(ack);
    }
  }
  CHECK(out == "37\n");  // 3! * 5 + 7
  CHECK(eof);
  CHECK(Slurp(r.ranks(0).stdout_path()) == "37\n");
  ExpectNoneLeft(MpiTaskMarker(l.options().run_id, 11));

  // Logs of one rank, and of all.
  auto logs = l.Logs(11, 2, 0);
  REQUIRE(logs.has_value());
  REQUIRE(logs->files_size() == 2);
  CHECK(logs->files(1).stream() == "stderr");
  CHECK(absl::StrContains(logs->files(1).data(), "rank 2 of 3"));
  logs = l.Logs(11, std::nullopt, 0);
  CHECK(logs->files_size() == 7);  // 3 ranks x 2 + the launcher's log
  logs = l.Logs(11, 3, 0);
  CHECK(absl::StrContains(logs->note(), "no rank 3"));
  CHECK(!l.Logs(99, std::nullopt, 0).has_value());

  // A client that attaches after the end still reads rank 0's output.
  open.set_channel(6);
  l.OnTaskIO(open);
  std::vector<v1::TaskIOFrame> frames = l.TakeTaskIO();
  REQUIRE(frames.size() >= 2);
  CHECK(frames[0].started().ended());
  std::string again;
  for (auto& f : frames) again += f.data();
  CHECK(again == "37\n");
  CHECK(frames.back().eof());
}

TEST_CASE("a rank that fails fails the job with its exit code; the others are ended") {
  const std::string crash = Compile("crash", kCrash);
  MpiLauncher l(Options(TestDir()), &Now);
  REQUIRE(l.Start(Job(21, {crash}, 3)).ok());
  const auto t0 = std::chrono::steady_clock::now();
  ExecutableOutcome o = RunUntilDone(&l, 21, 30000);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(took < 10);
  CHECK(o.outcome == v1::APP_EXCEPTION);
  v1::MpiJobResult r = Result(o);
  CHECK(r.exit_code() == 3);
  CHECK(r.failed_rank() == 1);
  CHECK(r.ranks(1).state() == "exited");
  CHECK(r.ranks(1).exit_code() == 3);
  CHECK(r.ranks(1).pid() > 0);
  CHECK(absl::StrContains(o.error, "rank 1 on"));
  CHECK(absl::StrContains(o.error, "exited with code 3"));
  ExpectNoneLeft(MpiTaskMarker(l.options().run_id, 21));
}

TEST_CASE("cancel ends every rank; a timeout too") {
  const std::string sleeper = Compile("sleeper", kSleeper);
  MpiLauncher l(Options(TestDir()), &Now);
  REQUIRE(l.Start(Job(31, {sleeper}, 2)).ok());
  REQUIRE(l.Start(Job(32, {sleeper}, 2, /*timeout_s=*/2)).ok());
  // Wait for rank 0's first line, then cancel 31.
  v1::TaskIOFrame open;
  open.set_task_id(31);
  open.set_channel(1);
  open.set_open(true);
  l.OnTaskIO(open);
  std::string out;
  for (int i = 0; i < 200 && out.empty(); ++i) {
    std::vector<pollfd> fds;
    l.AppendPollFds(&fds);
    poll(fds.data(), fds.size(), 50);
    l.Collect();
    for (auto& f : l.TakeTaskIO()) out += f.data();
  }
  CHECK(out == "started\n");
  CHECK(Marked(MpiTaskMarker(l.options().run_id, 31)).size() >= 2);
  l.Kill(31);
  ExecutableOutcome o = RunUntilDone(&l, 31, 20000);
  CHECK(o.killed_by_request);
  CHECK(absl::StrContains(Result(o).error(), "cancelled"));
  ExpectNoneLeft(MpiTaskMarker(l.options().run_id, 31));

  o = RunUntilDone(&l, 32, 20000);
  CHECK(o.outcome == v1::APP_EXCEPTION);
  CHECK(Result(o).timed_out());
  CHECK(absl::StrContains(o.error, "timed out after 2 s"));
  ExpectNoneLeft(MpiTaskMarker(l.options().run_id, 32));
}

TEST_CASE("a program that cannot be started fails the job naming it") {
  MpiLauncher l(Options(TestDir()), &Now);
  REQUIRE(l.Start(Job(41, {"/nonexistent/program"}, 2)).ok());
  ExecutableOutcome o = RunUntilDone(&l, 41, 30000);
  CHECK(o.outcome == v1::APP_EXCEPTION);
  v1::MpiJobResult r = Result(o);
  CHECK(r.exit_code() == 127);
  CHECK(absl::StrContains(o.error, "could not start '/nonexistent/program'"));

  // A launcher that does not exist is refused at Start.
  MpiLauncherOptions bad = Options(TestDir());
  bad.config.mpiexec = "no-such-mpiexec";
  MpiLauncher l2(bad, &Now);
  auto pid = l2.Start(Job(42, {"/bin/true"}, 1));
  REQUIRE(!pid.ok());
  CHECK(absl::StrContains(pid.status().message(), "no-such-mpiexec"));
  CHECK(absl::StrContains(pid.status().message(), "DRAGON_MPI_LAUNCHER"));
}

TEST_CASE("rank 0's stdout keeps within the window until acknowledged") {
  const std::string chatty = Compile("chatty", kChatty);
  MpiLauncherOptions opts = Options(TestDir());
  opts.io_window = 4096;
  MpiLauncher l(opts, &Now);
  const int kLines = 20000;  // 540 kB
  REQUIRE(l.Start(Job(51, {chatty, std::to_string(kLines)}, 2)).ok());
  v1::TaskIOFrame open;
  open.set_task_id(51);
  open.set_channel(9);
  open.set_open(true);
  l.OnTaskIO(open);
  std::string out;
  uint64_t acked = 0;
  bool eof = false, ended = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int acks = 0;
  while (!eof && std::chrono::steady_clock::now() < deadline) {
    std::vector<pollfd> fds;
    l.AppendPollFds(&fds);
    poll(fds.data(), fds.size(), 20);
    for (auto& o : l.Collect()) {
      CHECK(o.outcome == v1::OK);
      ended = true;
    }
    for (auto& f : l.TakeTaskIO()) {
      REQUIRE(f.data_offset() == out.size());
      out += f.data();
      CHECK(out.size() - acked <= 4096);  // never more than the window in flight
      if (!f.data().empty() && !ended) CHECK(f.data().back() == '\n');  // whole lines
      eof = eof || f.eof();
    }
    // The client takes its time: acknowledges every other pass.
    if (++acks % 2 == 0 && acked < out.size()) {
      acked = out.size();
      v1::TaskIOFrame ack;
      ack.set_task_id(51);
      ack.set_channel(9);
      ack.set_ack(acked);
      l.OnTaskIO(ack);
    }
  }
  REQUIRE(eof);
  CHECK(out.size() == static_cast<size_t>(kLines) * 27);
  CHECK(absl::StartsWith(out, "line 000000 of some output\n"));
  CHECK(absl::EndsWith(out, "line 019999 of some output\n"));
}

TEST_CASE("TaskIO for a task that is not an MPI job here is an error frame") {
  MpiLauncher l(Options(TestDir()), &Now);
  v1::TaskIOFrame open;
  open.set_task_id(77);
  open.set_channel(3);
  open.set_open(true);
  l.OnTaskIO(open);
  auto frames = l.TakeTaskIO();
  REQUIRE(frames.size() == 1);
  CHECK(frames[0].channel() == 3);
  CHECK(absl::StrContains(frames[0].error(), "task 77 is not an MPI job led by node n1"));
}

}  // namespace
}  // namespace dragon::agent
