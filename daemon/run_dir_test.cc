#include "daemon/run_dir.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>

namespace dragon::daemon {
namespace {

// A fresh $DRAGON_HOME under $TEST_TMPDIR (Bazel) or /tmp, removed at the end.
class TempHome {
 public:
  TempHome() {
    const char* base = getenv("TEST_TMPDIR");
    std::string templ = std::string(base ? base : "/tmp") + "/run_dir_XXXXXX";
    path_ = mkdtemp(templ.data()) ? templ : "";
    REQUIRE(!path_.empty());
  }
  ~TempHome() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

  // A run directory with its head.json (pid, start time), as dragond writes it.
  std::string AddRun(const std::string& id, int pid, int64_t started_us) {
    const std::string dir = path_ + "/runs/" + id;
    REQUIRE(MakeDirs(dir).ok());
    dragon::v1::RunInfo info;
    info.set_run_id(id);
    info.set_address("127.0.0.1:" + std::to_string(40000 + pid));
    info.set_pid(pid);
    info.set_started_us(started_us);
    info.set_run_dir(dir);
    REQUIRE(WriteRunInfo(info).ok());
    return dir;
  }
  std::string Current() const {
    char target[PATH_MAX];
    ssize_t n = readlink((path_ + "/current").c_str(), target, sizeof(target) - 1);
    return n > 0 ? std::string(target, static_cast<size_t>(n)) : std::string();
  }

 private:
  std::string path_;
};

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// pids 1..9 run in these tests; 66 is a head killed without cleaning up.
bool FakeAlive(const dragon::v1::RunInfo& info) { return info.pid() < 10; }

TEST_CASE("RemoveRunInfo: stopping the current head points current at the newest live run") {
  TempHome home;
  const std::string first = home.AddRun("first", 1, 100);
  const std::string older = home.AddRun("older", 2, 50);
  const std::string killed = home.AddRun("killed", 66, 900);  // newest, but not alive
  const std::string second = home.AddRun("second", 3, 200);
  REQUIRE(UpdateCurrentLink(home.path(), second).ok());

  auto now = RemoveRunInfo(home.path(), second, FakeAlive);
  CHECK_FALSE(Exists(second + "/head.json"));
  REQUIRE(now.has_value());
  CHECK(now->run_id() == "first");
  CHECK(home.Current() == first);

  // Stopping that one falls back to the next; the last one leaves no link.
  now = RemoveRunInfo(home.path(), first, FakeAlive);
  REQUIRE(now.has_value());
  CHECK(home.Current() == older);
  CHECK_FALSE(RemoveRunInfo(home.path(), older, FakeAlive).has_value());
  CHECK(home.Current().empty());
  CHECK_FALSE(Exists(home.path() + "/current"));
  CHECK(Exists(killed + "/head.json"));  // another run's files are not touched
}

TEST_CASE("RemoveRunInfo: a head that current does not point at leaves current alone") {
  TempHome home;
  const std::string first = home.AddRun("first", 1, 100);
  const std::string second = home.AddRun("second", 2, 200);
  REQUIRE(UpdateCurrentLink(home.path(), second).ok());
  CHECK_FALSE(RemoveRunInfo(home.path(), first, FakeAlive).has_value());
  CHECK_FALSE(Exists(first + "/head.json"));
  CHECK(home.Current() == second);

  // No current link at all (dragond --no-current, or removed by hand): none is made.
  TempHome bare;
  const std::string run = bare.AddRun("run", 1, 100);
  const std::string other = bare.AddRun("other", 2, 200);
  CHECK_FALSE(RemoveRunInfo(bare.path(), run, FakeAlive).has_value());
  CHECK(bare.Current().empty());
  CHECK(Exists(other + "/head.json"));
}

}  // namespace
}  // namespace dragon::daemon
