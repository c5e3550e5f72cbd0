#include "agent/grant_files.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

namespace dragon::agent {
namespace {

TEST_CASE("grant files: written whole, private, removed with their directory", "[grant_files]") {
  char tmpl[] = "/tmp/grant-test-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string root = tmpl;
  REQUIRE(WriteGrantFile("run1", "n1", 42, {3, 5}, root).ok());
  const std::string path = GrantFile("run1", "n1", 42, root);
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  CHECK(line == "3,5");
  struct stat st {};
  REQUIRE(stat(GrantDir("run1", root).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  REQUIRE(WriteGrantFile("run1", "n1", 42, {1}, root).ok());  // replaced whole
  std::ifstream again(path);
  std::getline(again, line);
  CHECK(line == "1");
  RemoveGrantFile("run1", "n1", 42, root);
  CHECK(access(path.c_str(), F_OK) != 0);
  RemoveGrantDir("run1", root);
  CHECK(access(GrantDir("run1", root).c_str(), F_OK) != 0);
  rmdir(root.c_str());
}

}  // namespace
}  // namespace dragon::agent
