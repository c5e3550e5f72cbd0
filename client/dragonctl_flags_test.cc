// dragonctl's flag types, argv preparation and the wording of absl's usage
// errors. tests/test_dragonctl.py runs the binary itself (exit codes).
#include "client/dragonctl_flags.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace dragon::client {
namespace {

PreparedArgs Prepare(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return PrepareArgs(static_cast<int>(argv.size()), argv.data());
}

TEST_CASE("--timeout takes seconds > 0, at most a day") {
  TimeoutFlag t;
  std::string error;
  REQUIRE(AbslParseFlag("1.5", &t, &error));
  CHECK(t.value == absl::Milliseconds(1500));
  REQUIRE(AbslParseFlag("86400", &t, &error));
  for (const char* bad : {"0", "-1", "abc", "", "nan", "inf", "86401"}) {
    INFO(bad);
    CHECK_FALSE(AbslParseFlag(bad, &t, &error));
    CHECK(error == "expected a number of seconds > 0 (at most 86400)");
  }
  CHECK(AbslUnparseFlag(TimeoutFlag{absl::Seconds(10)}) == "10");
}

TEST_CASE("--limit: unset by default, a whole number when given") {
  LimitFlag l;
  std::string error;
  REQUIRE(AbslParseFlag("", &l, &error));
  CHECK_FALSE(l.value.has_value());
  REQUIRE(AbslParseFlag("0", &l, &error));
  CHECK(l.value == 0u);
  REQUIRE(AbslParseFlag("25", &l, &error));
  CHECK(l.value == 25u);
  for (const char* bad : {"many", "-1", "+3", "1.5", "4294967296"}) {
    INFO(bad);
    CHECK_FALSE(AbslParseFlag(bad, &l, &error));
    CHECK(error == "expected a whole number >= 0 (0 = the head's default)");
  }
  CHECK(AbslUnparseFlag(LimitFlag{}) == "");
  CHECK(AbslUnparseFlag(LimitFlag{7}) == "7");
}

TEST_CASE("--state: a task state as users type it") {
  StateFlag s;
  std::string error;
  REQUIRE(AbslParseFlag("Running", &s, &error));
  CHECK(s.value == dragon::v1::RUNNING);
  REQUIRE(AbslParseFlag("", &s, &error));
  CHECK_FALSE(s.value.has_value());
  CHECK_FALSE(AbslParseFlag("sleeping", &s, &error));
  CHECK(error == "expected one of pending, scheduled, running, done, failed, cancelled");
  CHECK(AbslUnparseFlag(StateFlag{dragon::v1::DONE}) == "done");
}

TEST_CASE("argv: dashed names become absl's, help is taken out before '--'") {
  PreparedArgs p = Prepare({"dragonctl", "--run-dir=/a-b", "status", "-h", "--token-file", "x-y"});
  CHECK(p.help);
  CHECK(p.storage ==
        std::vector<std::string>{"dragonctl", "--run_dir=/a-b", "status", "--token_file", "x-y"});
  REQUIRE(p.argv.size() == p.storage.size());
  CHECK(std::string(p.argv[1]) == "--run_dir=/a-b");

  p = Prepare({"dragonctl", "--help"});
  CHECK(p.help);
  CHECK(p.storage == std::vector<std::string>{"dragonctl"});

  p = Prepare({"dragonctl", "show", "--", "--help"});
  CHECK_FALSE(p.help);
  CHECK(p.storage == std::vector<std::string>{"dragonctl", "show", "--", "--help"});

  p = Prepare({"dragonctl", "nodes", "drain", "local-0"});
  CHECK_FALSE(p.help);
  CHECK(p.storage[3] == "local-0");
}

TEST_CASE("absl's usage errors in dragonctl's words") {
  CHECK(RephraseFlagError("Unknown command line flag 'verbose'") ==
        "unknown flag '--verbose' (see 'dragonctl --help')");
  CHECK(RephraseFlagError("Unknown command line flag 'run_dirr'") ==
        "unknown flag '--run-dirr' (see 'dragonctl --help')");
  // "-5" reaches absl as an unknown flag named '5': it can only be a task id.
  CHECK(RephraseFlagError("Unknown command line flag '5'") ==
        "bad task id '-5': expected a positive whole number (the ID column of 'dragonctl ps')");
  CHECK(RephraseFlagError("Missing the value for the flag 'token_file'") ==
        "--token-file needs a value");
  CHECK(RephraseFlagError("Illegal value 'many' specified for flag 'limit'; expected a whole "
                          "number >= 0 (0 = the head's default)") ==
        "bad --limit 'many': expected a whole number >= 0 (0 = the head's default)");
  CHECK(RephraseFlagError("Illegal value 'maybe' specified for flag 'json'") ==
        "bad --json 'maybe'");
  // Anything else is passed on as absl said it.
  CHECK(RephraseFlagError("Missing the value after assignment for the boolean flag 'json'") ==
        "Missing the value after assignment for the boolean flag 'json'");
  CHECK(RephraseFlagError("something new") == "something new");
}

TEST_CASE("task ids are positive whole numbers") {
  uint64_t id = 0;
  CHECK_FALSE(ParseTaskId("42", &id).has_value());
  CHECK(id == 42);
  for (const char* bad : {"0", "-3", "abc", "", "1e3", "18446744073709551616"}) {
    INFO(bad);
    auto err = ParseTaskId(bad, &id);
    REQUIRE(err.has_value());
    CHECK(*err == std::string("bad task id '") + bad +
                      "': expected a positive whole number (the ID column of 'dragonctl ps')");
  }
}

TEST_CASE("nodes add: hosts as arguments or comma lists, each once") {
  std::vector<std::string> hosts;
  CHECK_FALSE(ParseHostArgs({"h4"}, &hosts).has_value());
  CHECK(hosts == std::vector<std::string>{"h4"});
  CHECK_FALSE(ParseHostArgs({"h3,h4", "h5", " h3 ", "root@n1.cluster"}, &hosts).has_value());
  CHECK(hosts == std::vector<std::string>{"h3", "h4", "h5", "root@n1.cluster"});

  auto err = ParseHostArgs({}, &hosts);
  REQUIRE(err.has_value());
  CHECK(*err == "'nodes add' takes one or more hosts (usage: dragonctl nodes add HOST...)");
  err = ParseHostArgs({"h1,,h2"}, &hosts);
  REQUIRE(err.has_value());
  CHECK(*err == "bad host list 'h1,,h2': an empty host name");
  err = ParseHostArgs({"-oProxyCommand=x"}, &hosts);
  REQUIRE(err.has_value());
  CHECK(*err == "bad host '-oProxyCommand=x': a host name does not start with '-'");
  err = ParseHostArgs({"h1;reboot"}, &hosts);
  REQUIRE(err.has_value());
  CHECK(*err == "bad host 'h1;reboot': a host name cannot hold ';'");
}

}  // namespace
}  // namespace dragon::client
