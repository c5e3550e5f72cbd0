#include "common/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <string>

extern char** environ;

namespace dragon::common {
namespace {

std::vector<std::string> Environ() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  return env;
}

// Runs `script` with /bin/sh, stdout on a pipe; returns (exit status, output).
std::pair<int, std::string> RunShell(SpawnSpec spec, const std::string& script) {
  int out[2];
  REQUIRE(pipe2(out, O_CLOEXEC) == 0);
  spec.path = "/bin/sh";
  spec.argv = {"sh", "-c", script};
  if (spec.fds.size() < 2) spec.fds.resize(2);
  spec.fds[1] = ChildFd::Dup(out[1]);
  absl::StatusOr<Spawned> s = Spawn(spec);
  close(out[1]);
  REQUIRE(s.ok());
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) text.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  REQUIRE(waitpid(s->pid, &status, 0) == s->pid);
  if (s->report_fd >= 0) close(s->report_fd);
  return {status, text};
}

std::string TempPath(const std::string& name) {
  const char* base = getenv("TEST_TMPDIR");
  return std::string(base ? base : "/tmp") + "/" + name + std::to_string(getpid());
}

TEST_CASE("argv, environment and cwd reach the program; fork and vfork alike") {
  for (bool use_vfork : {false, true}) {
    SpawnSpec spec;
    spec.use_vfork = use_vfork;
    spec.env = {"GREETING=hi there"};
    spec.cwd = "/";
    auto [status, out] = RunShell(spec, "echo \"$GREETING\" $(pwd) $#");
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(out == "hi there / 0\n");
  }
}

TEST_CASE("an exec failure is Spawn's error when it waits, naming the program and errno") {
  SpawnSpec spec;
  spec.path = "/nonexistent/program";
  spec.argv = {"prog"};
  SpawnError error;
  absl::StatusOr<Spawned> s = Spawn(spec, &error);
  REQUIRE_FALSE(s.ok());
  CHECK(s.status().code() == absl::StatusCode::kNotFound);
  CHECK(std::string(s.status().message()) == "cannot run prog: No such file or directory");
  CHECK(error.stage == SpawnError::kChild);
  CHECK(error.step == SpawnStep::kExec);
  CHECK(error.err == ENOENT);
}

TEST_CASE("search_path looks the name up in PATH") {
  SpawnSpec spec;
  spec.path = "true";
  spec.argv = {"true"};
  spec.search_path = true;
  spec.env = Environ();
  absl::StatusOr<Spawned> s = Spawn(spec);
  REQUIRE(s.ok());
  int status = 0;
  REQUIRE(waitpid(s->pid, &status, 0) == s->pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  spec.path = spec.argv[0] = "no-such-program-anywhere";
  s = Spawn(spec);
  REQUIRE_FALSE(s.ok());
  CHECK(std::string(s.status().message()) ==
        "cannot run no-such-program-anywhere: No such file or directory");
}

TEST_CASE("a deferred report names the failed step; the exit code is the spec's") {
  SpawnSpec spec;
  spec.path = "/bin/true";
  spec.argv = {"true"};
  spec.cwd = "/nonexistent/dir";
  spec.report = ChildReport::kDeferred;
  spec.use_vfork = true;
  spec.setup_exit_code = 126;
  absl::StatusOr<Spawned> s = Spawn(spec);
  REQUIRE(s.ok());
  int status = 0;
  REQUIRE(waitpid(s->pid, &status, 0) == s->pid);
  CHECK(WEXITSTATUS(status) == 126);
  std::optional<ChildFailure> failure = ReadChildFailure(s->report_fd);
  close(s->report_fd);
  REQUIRE(failure.has_value());
  CHECK(failure->step == SpawnStep::kChdir);
  CHECK(failure->err == ENOENT);

  // A successful exec leaves nothing to read.
  spec.cwd = "";
  s = Spawn(spec);
  REQUIRE(s.ok());
  REQUIRE(waitpid(s->pid, &status, 0) == s->pid);
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_FALSE(ReadChildFailure(s->report_fd).has_value());
  close(s->report_fd);
}

TEST_CASE("without a report pipe the note runs in the child and the exit code tells") {
  const std::string log = TempPath("spawn_note");
  unlink(log.c_str());
  SpawnSpec spec;
  spec.path = "/nonexistent/program";
  spec.argv = {"prog"};
  spec.report = ChildReport::kNone;
  spec.fds = {ChildFd::DevNull(), ChildFd::AppendTo(log, 0600), ChildFd::AppendTo(log, 0600)};
  spec.note = [](SpawnStep step, int err, const char* argv0) {
    char msg[64] = "note ";
    size_t n = strlen(msg);
    msg[n++] = static_cast<char>(step);
    msg[n++] = ' ';
    msg[n++] = static_cast<char>('0' + err % 10);
    msg[n++] = ' ';
    for (const char* p = argv0; *p != '\0' && n < sizeof(msg) - 2; ++p) msg[n++] = *p;
    msg[n++] = '\n';
    (void)!write(2, msg, n);
  };
  absl::StatusOr<Spawned> s = Spawn(spec);
  REQUIRE(s.ok());
  int status = 0;
  REQUIRE(waitpid(s->pid, &status, 0) == s->pid);
  CHECK(WEXITSTATUS(status) == 127);
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  CHECK(text.str() == "note e 2 prog\n");
  unlink(log.c_str());
}

TEST_CASE("extra fds land on 3 and 4; other fds are closed or close-on-exec") {
  int a[2], b[2];
  REQUIRE(pipe(a) == 0);
  REQUIRE(pipe2(b, O_CLOEXEC) == 0);
  // Not close-on-exec, and above the child's targets: only the spec may keep it out.
  const int high = fcntl(a[1], F_DUPFD, 50);
  REQUIRE(high >= 50);
  const std::string leak = std::to_string(high);
  for (auto other : {SpawnSpec::OtherFds::kClose, SpawnSpec::OtherFds::kCloseOnExec}) {
    SpawnSpec spec;
    spec.other_fds = other;
    spec.fds = {ChildFd::DevNull(), ChildFd::Inherit(), ChildFd::Inherit(), ChildFd::Dup(b[0]),
                ChildFd::Dup(b[1])};
    auto [status, out] =
        RunShell(spec, "ls /proc/self/fd | sort -n | tr '\\n' ' '; [ -e /proc/self/fd/" + leak +
                           " ] && echo leaked; exit 0");
    CHECK(WEXITSTATUS(status) == 0);
    // 0-4 and the fd ls opens for the directory.
    CHECK(out.rfind("0 1 2 3 4 ", 0) == 0);
    CHECK(out.find("leaked") == std::string::npos);
  }
  for (int fd : {a[0], a[1], b[0], b[1], high}) close(fd);
}

TEST_CASE("kLeave keeps inheritable fds") {
  int a[2];
  REQUIRE(pipe(a) == 0);
  SpawnSpec spec;
  spec.other_fds = SpawnSpec::OtherFds::kLeave;
  auto [status, out] =
      RunShell(spec, "[ -e /proc/self/fd/" + std::to_string(a[1]) + " ] && echo kept");
  CHECK(out == "kept\n");
  close(a[0]);
  close(a[1]);
}

TEST_CASE("own process group, CPU affinity and signals set back to default") {
  SpawnSpec spec;
  spec.group = SpawnSpec::Group::kNewGroup;
  spec.use_vfork = true;
  spec.cpus = {0};
  spec.death_signal = SIGKILL;
  spec.default_signals = {SIGPIPE};
  signal(SIGPIPE, SIG_IGN);
  auto [status, out] = RunShell(
      spec, "echo $(( $(cut -d' ' -f5 /proc/self/stat) == $$ )) "
            "$(grep Cpus_allowed_list /proc/self/status | cut -f2) "
            "$(grep SigIgn /proc/self/status | cut -f2)");
  signal(SIGPIPE, SIG_DFL);
  // The shell's pid is its own group ($$ is the shell; cut's pgid is the shell's).
  CHECK(out.rfind("1 0 ", 0) == 0);
  CHECK(out.find("0000000000001000") == std::string::npos);  // SIGPIPE not ignored
}

TEST_CASE("an append file that cannot be opened is Spawn's error; nothing runs") {
  SpawnSpec spec;
  spec.path = "/bin/true";
  spec.argv = {"true"};
  spec.fds = {ChildFd::DevNull(), ChildFd::AppendTo("/nonexistent/dir/log", 0)};
  SpawnError error;
  absl::StatusOr<Spawned> s = Spawn(spec, &error);
  REQUIRE_FALSE(s.ok());
  CHECK(std::string(s.status().message()) ==
        "cannot open /nonexistent/dir/log: No such file or directory");
  CHECK(error.stage == SpawnError::kOpen);
}

TEST_CASE("ResolveProgram looks in the given PATH like execvp") {
  absl::StatusOr<std::string> p = ResolveProgram("sh", "/nonexistent:/bin");
  REQUIRE(p.ok());
  CHECK(*p == "/bin/sh");
  CHECK(ResolveProgram("/bin/sh", "").value() == "/bin/sh");
  p = ResolveProgram("no-such-program", "/bin");
  REQUIRE_FALSE(p.ok());
  CHECK(std::string(p.status().message()) ==
        "cannot execute 'no-such-program': No such file or directory (searched PATH=/bin)");
  p = ResolveProgram("/nonexistent/x", "/bin");
  CHECK(std::string(p.status().message()) ==
        "cannot execute '/nonexistent/x': No such file or directory");
}

}  // namespace
}  // namespace dragon::common
