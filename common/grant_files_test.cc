#include "common/grant_files.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

namespace dragon::common {
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
  RemoveGrantDir("run1", "n1", root);
  CHECK(access(GrantDir("run1", root).c_str(), F_OK) != 0);
  rmdir(root.c_str());
}

// Each node's files as a separate process writes them: the owner file names that process.
pid_t WriterThatExits(const std::string& root, const std::string& run, const std::string& node,
                      uint64_t task) {
  const pid_t pid = fork();
  if (pid == 0) _exit(WriteGrantFile(run, node, task, {0}, root).ok() ? 0 : 1);
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  return pid;
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

TEST_CASE("grant files: the sweep removes what agents that are gone left, never a live one's",
          "[grant_files]") {
  char tmpl[] = "/tmp/grant-test-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string root = tmpl;
  // Left by agents killed before they could remove them (here: processes that exited),
  // one with a node id holding dots (a host's full name).
  WriterThatExits(root, "run1", "n1", 7);
  WriterThatExits(root, "run1", "n2.cluster.org", 8);
  WriterThatExits(root, "run2", "n1", 9);
  // This process is a live agent of run1 on n3.
  REQUIRE(WriteGrantFile("run1", "n3", 10, {1, 2}, root).ok());
  CHECK(Exists(GrantDir("run1", root) + "/owner.n3"));

  CHECK(SweepStaleGrants(root) == 6);  // three grant files and their three owner files
  CHECK_FALSE(Exists(GrantFile("run1", "n1", 7, root)));
  CHECK_FALSE(Exists(GrantFile("run1", "n2.cluster.org", 8, root)));
  CHECK_FALSE(Exists(GrantDir("run2", root)));  // emptied, so removed
  CHECK(Exists(GrantFile("run1", "n3", 10, root)));
  CHECK(SweepStaleGrants(root) == 0);  // nothing more: the live agent's files stay

  RemoveGrantFile("run1", "n3", 10, root);
  RemoveGrantDir("run1", "n3", root);
  CHECK_FALSE(Exists(GrantDir("run1", root)));
  CHECK(rmdir(root.c_str()) == 0);  // nothing else was left under the root
}

TEST_CASE("grant files: a pid reused by another process is not taken for the owner",
          "[grant_files]") {
  char tmpl[] = "/tmp/grant-test-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string root = tmpl;
  REQUIRE(WriteGrantFile("run1", "n1", 1, {0}, root).ok());
  // The same pid (this process) with another start time: an owner that is gone.
  const std::string owner = GrantDir("run1", root) + "/owner.n1";
  {
    std::ofstream out(owner, std::ios::trunc);
    out << getpid() << " 1\n";
  }
  CHECK(SweepStaleGrants(root) == 2);
  CHECK_FALSE(Exists(GrantDir("run1", root)));
  CHECK(rmdir(root.c_str()) == 0);
}

}  // namespace
}  // namespace dragon::common
