#include "daemon/launchers/host_list.h"

#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>

namespace dragon::daemon {
namespace {

TEST_CASE("a host list keeps order and drops repeats") {
  auto hosts = ParseHostList("h1, h2,h1,user@h3", "--hosts");
  REQUIRE(hosts.ok());
  CHECK(*hosts == std::vector<std::string>{"h1", "h2", "user@h3"});
}

TEST_CASE("bad host lists are refused naming the entry") {
  auto empty_entry = ParseHostList("h1,,h2", "--hosts");
  REQUIRE_FALSE(empty_entry.ok());
  CHECK(std::string(empty_entry.status().message()).find("--hosts") != std::string::npos);
  auto option = ParseHostList("-oProxyCommand=evil", "--hosts");
  REQUIRE_FALSE(option.ok());
  CHECK(std::string(option.status().message()).find("ssh option") != std::string::npos);
  CHECK_FALSE(ParseHostList("h1;rm -rf /", "--hosts").ok());
}

TEST_CASE("a host file: comments, slots, one line per slot, and an empty one") {
  const char* base = getenv("TEST_TMPDIR");
  const std::string path = std::string(base ? base : "/tmp") + "/hosts-" + std::to_string(getpid());
  {
    std::ofstream out(path);
    out << "# nodes of the job\n\nn1\nn1\nn2 slots=4\nn3:8   # mpich style\n";
  }
  auto hosts = ReadHostFile(path);
  REQUIRE(hosts.ok());
  CHECK(*hosts == std::vector<std::string>{"n1", "n2", "n3"});
  {
    std::ofstream out(path);
    out << "# nothing\n\n";
  }
  auto empty = ReadHostFile(path);
  REQUIRE_FALSE(empty.ok());
  CHECK(std::string(empty.status().message()).find("lists no hosts") != std::string::npos);
  {
    std::ofstream out(path);
    out << "n1\nbad!host\n";
  }
  auto bad = ReadHostFile(path);
  REQUIRE_FALSE(bad.ok());
  CHECK(std::string(bad.status().message()).find("line 2") != std::string::npos);
  unlink(path.c_str());
  CHECK(absl::IsNotFound(ReadHostFile(path).status()));
}

}  // namespace
}  // namespace dragon::daemon
