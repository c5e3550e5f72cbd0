#include "common/head_locator.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>

#include "common/host.h"

namespace dragon::common {
namespace {

// A fresh directory under $TEST_TMPDIR (Bazel) or /tmp, removed at the end.
class TempDir {
 public:
  TempDir() {
    const char* base = getenv("TEST_TMPDIR");
    std::string templ = std::string(base ? base : "/tmp") + "/head_locator_XXXXXX";
    path_ = mkdtemp(templ.data()) ? templ : "";
    REQUIRE(!path_.empty());
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Sets (or with nullptr unsets) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = getenv(name);
    had_old_ = old != nullptr;
    if (had_old_) old_ = old;
    if (value) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (had_old_) {
      setenv(name_.c_str(), old_.c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_;
  std::string old_;
  bool had_old_ = false;
};

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  REQUIRE(out.good());
}

const char kHeadJson[] = R"({
  "run_id": "20260101-120000-42",
  "address": "127.0.0.1:4321",
  "pid": 42,
  "host": "n1",
  "started_us": "1767268800000000",
  "run_dir": "/x/runs/r",
  "head_version": "0.1.0",
  "protocol_version": 1,
  "log_file": "/x/runs/r/dragond.log",
  "some_future_field": {"a": 1}
})";

TEST_CASE("ValidateHostPort accepts HOST:PORT and names bad values") {
  CHECK(ValidateHostPort("127.0.0.1:50051", "--head").ok());
  CHECK(ValidateHostPort("node-7.cluster:1", "--head").ok());
  CHECK(ValidateHostPort("[::1]:65535", "--head").ok());

  for (const char* bad : {"", "localhost", ":80", "host:", "host:0", "host:65536", "host:8o",
                          "host:+80", "::1:80", "[::1]80", "[::1", "a b:80"}) {
    absl::Status s = ValidateHostPort(bad, "--head");
    INFO("value: '" << bad << "' -> " << s.ToString());
    CHECK(absl::IsInvalidArgument(s));
    CHECK(std::string(s.message()).find(std::string("bad --head address '") + bad + "'") == 0);
  }
}

TEST_CASE("ReadRunInfo parses snake_case JSON and ignores unknown fields") {
  TempDir dir;
  const std::string path = dir.path() + "/head.json";
  WriteFile(path, kHeadJson);
  auto info = ReadRunInfo(path);
  REQUIRE(info.ok());
  CHECK(info->address() == "127.0.0.1:4321");
  CHECK(info->run_id() == "20260101-120000-42");
  CHECK(info->pid() == 42);
  CHECK(info->started_us() == 1767268800000000);
  CHECK(info->protocol_version() == 1);
  CHECK(info->log_file() == "/x/runs/r/dragond.log");
}

TEST_CASE("ReadRunInfo reports missing, broken and address-less files") {
  TempDir dir;
  CHECK(absl::IsNotFound(ReadRunInfo(dir.path() + "/nope.json").status()));

  const std::string broken = dir.path() + "/broken.json";
  WriteFile(broken, "{\"address\": ");
  auto s = ReadRunInfo(broken).status();
  CHECK(absl::IsInvalidArgument(s));
  CHECK(std::string(s.message()).find("cannot parse " + broken) == 0);

  const std::string no_addr = dir.path() + "/noaddr.json";
  WriteFile(no_addr, R"({"run_id": "r", "pid": 3})");
  s = ReadRunInfo(no_addr).status();
  CHECK(absl::IsInvalidArgument(s));
  CHECK(std::string(s.message()).find(no_addr + " has no usable address") == 0);
}

TEST_CASE("LocateHead: explicit address beats $DRAGON_HEAD beats run dir beats current") {
  TempDir home;
  const std::string run = home.path() + "/runs/r1";
  REQUIRE(std::system(("mkdir -p '" + run + "'").c_str()) == 0);
  WriteFile(run + "/head.json", kHeadJson);
  REQUIRE(symlink(run.c_str(), (home.path() + "/current").c_str()) == 0);
  ScopedEnv dragon_home("DRAGON_HOME", home.path().c_str());

  {
    ScopedEnv head("DRAGON_HEAD", "envhost:1111");
    auto loc = LocateHead({"explicit:2222", run});
    REQUIRE(loc.ok());
    CHECK(loc->address == "explicit:2222");
    CHECK(loc->source == "--head");
    CHECK(!loc->run_info.has_value());

    loc = LocateHead({"", run});
    REQUIRE(loc.ok());
    CHECK(loc->address == "envhost:1111");
    CHECK(loc->source == "$DRAGON_HEAD");
  }
  ScopedEnv no_head("DRAGON_HEAD", nullptr);

  TempDir other;
  const std::string other_json =
      std::string(kHeadJson).replace(std::string(kHeadJson).find("127.0.0.1:4321"), 14,
                                     "10.0.0.9:7777");
  WriteFile(other.path() + "/head.json", other_json);
  auto loc = LocateHead({"", other.path()});
  REQUIRE(loc.ok());
  CHECK(loc->address == "10.0.0.9:7777");
  CHECK(loc->source == other.path() + "/head.json");
  REQUIRE(loc->run_info.has_value());
  CHECK(loc->run_info->pid() == 42);

  loc = LocateHead({});
  REQUIRE(loc.ok());
  CHECK(loc->address == "127.0.0.1:4321");
  CHECK(loc->source == home.path() + "/current/head.json");
}

TEST_CASE("LocateHead: nothing running gives the documented message") {
  TempDir home;
  ScopedEnv dragon_home("DRAGON_HOME", home.path().c_str());
  ScopedEnv no_head("DRAGON_HEAD", nullptr);
  auto loc = LocateHead({});
  CHECK(absl::IsNotFound(loc.status()));
  CHECK(std::string(loc.status().message()) ==
        "no dragond is running (no $DRAGON_HEAD and no " + home.path() +
            "/current/head.json); start one with 'dragond start'");

  // An explicit --run-dir without head.json does not fall back to current.
  TempDir run;
  WriteFile(home.path() + "/head.json", kHeadJson);
  REQUIRE(symlink(home.path().c_str(), (home.path() + "/current").c_str()) == 0);
  loc = LocateHead({"", run.path()});
  CHECK(absl::IsNotFound(loc.status()));
  CHECK(std::string(loc.status().message()) ==
        "no dragond is running (no $DRAGON_HEAD and no " + run.path() +
            "/head.json); start one with 'dragond start'");
}

// A run directory HOME/runs/NAME whose head.json says `pid`, `host` and `started_us`.
void WriteRun(const std::string& home, const std::string& name, int pid, const std::string& host,
              long long started_us) {
  const std::string run = home + "/runs/" + name;
  REQUIRE(std::system(("mkdir -p '" + run + "'").c_str()) == 0);
  WriteFile(run + "/head.json",
            "{\"run_id\": \"" + name + "\", \"address\": \"127.0.0.1:" + std::to_string(4000 + pid) +
                "\", \"pid\": " + std::to_string(pid) + ", \"host\": \"" + host +
                "\", \"started_us\": \"" + std::to_string(started_us) + "\", \"run_dir\": \"" + run +
                "\"}");
}

TEST_CASE("LiveRuns: the runs whose head is alive, newest first") {
  TempDir home;
  WriteRun(home.path(), "old", 1, "n1", 100);
  WriteRun(home.path(), "new", 2, "n1", 300);
  WriteRun(home.path(), "dead", 3, "n1", 200);
  REQUIRE(std::system(("mkdir -p '" + home.path() + "/runs/empty'").c_str()) == 0);  // no head.json
  WriteFile(home.path() + "/runs/stray-file", "{");  // not a run directory
  auto alive = [](const dragon::v1::RunInfo& info) { return info.pid() != 3; };
  auto live = LiveRuns(home.path(), alive);
  REQUIRE(live.size() == 2);
  CHECK(live[0].run_id() == "new");
  CHECK(live[1].run_id() == "old");
  CHECK(LiveRuns(home.path() + "/nothing-here", alive).empty());
}

TEST_CASE("HeadProcessAlive: this host, a live pid, and that process is a dragond") {
  dragon::v1::RunInfo info;
  info.set_pid(getpid());
  info.set_host(Hostname());
  CHECK_FALSE(HeadProcessAlive(info));  // alive, but this test is not called dragond
  info.set_pid(0);
  CHECK_FALSE(HeadProcessAlive(info));
  info.set_pid(getpid());
  info.set_host(Hostname() + "-elsewhere");  // cannot be asked from here
  CHECK_FALSE(HeadProcessAlive(info));
}

TEST_CASE("LocateHead: no current head, but heads of other runs: names them") {
  TempDir home;
  ScopedEnv dragon_home("DRAGON_HOME", home.path().c_str());
  ScopedEnv dragon_head("DRAGON_HEAD", nullptr);
  // The runs' heads are not alive here (pid 1 is not a dragond): the documented message.
  WriteRun(home.path(), "r1", 1, Hostname(), 100);
  auto s = LocateHead({}).status();
  CHECK(absl::IsNotFound(s));
  CHECK(std::string(s.message()).find("no dragond is running") == 0);
}

TEST_CASE("LocateHead: bad addresses are rejected with their origin") {
  ScopedEnv bad_env("DRAGON_HEAD", "nocolon");
  auto loc = LocateHead({});
  CHECK(absl::IsInvalidArgument(loc.status()));
  CHECK(std::string(loc.status().message()).find("bad $DRAGON_HEAD address 'nocolon'") == 0);

  loc = LocateHead({"h:99999", ""});
  CHECK(absl::IsInvalidArgument(loc.status()));
  CHECK(std::string(loc.status().message()).find("bad --head address 'h:99999'") == 0);
}

TEST_CASE("DragonHome defaults to ~/.dragon") {
  ScopedEnv no_home("DRAGON_HOME", nullptr);
  ScopedEnv home("HOME", "/home/someone");
  CHECK(DragonHome() == "/home/someone/.dragon");
  ScopedEnv empty_home("DRAGON_HOME", "");
  CHECK(DragonHome() == "/home/someone/.dragon");
  ScopedEnv set_home("DRAGON_HOME", "/scratch/dh");
  CHECK(DragonHome() == "/scratch/dh");
}

}  // namespace
}  // namespace dragon::common
