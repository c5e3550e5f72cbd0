#include "agent/process_tree.h"

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <thread>

namespace dragon::agent {
namespace {

TEST_CASE("stat lines parse, commands with spaces and parentheses included", "[process_tree]") {
  ProcInfo p;
  REQUIRE(ParseStat("42 (a b) c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 100 1000 25 x",
                    &p));
  CHECK(p.pid == 42);
  CHECK(p.ppid == 7);
  CHECK(p.pgid == 42);
  CHECK(p.rss_pages == 25);
  CHECK_FALSE(ParseStat("garbage", &p));
}

TEST_CASE("a tree: descendants by parent, and the root's group", "[process_tree]") {
  std::vector<ProcInfo> procs = {
      {10, 1, 10, 5}, {11, 10, 10, 1}, {12, 11, 12, 1},  // 12 left the group but is a grandchild
      {13, 1, 10, 1},                                     // orphan still in the group
      {20, 1, 20, 9},                                     // unrelated
  };
  std::vector<int> tree = TreeOf(10, procs);
  std::sort(tree.begin(), tree.end());
  CHECK(tree == std::vector<int>{10, 11, 12, 13});
  CHECK(TreeOf(20, procs) == std::vector<int>{20});
}

TEST_CASE("kill and memory of a real tree; affinity of a real process", "[process_tree]") {
  const pid_t root = fork();
  REQUIRE(root >= 0);
  if (root == 0) {
    setpgid(0, 0);
    if (fork() == 0) {
      setsid();  // leaves the group: found through its parent
      pause();
      _exit(0);
    }
    pause();
    _exit(0);
  }
  setpgid(root, root);
  usleep(100'000);
  std::vector<int> tree = TreeOf(root, ListProcesses());
  REQUIRE(tree.size() == 2);
  CHECK(TreeRssBytes(root) > 0);
  std::vector<int> cpus = AffinityCpus();
  REQUIRE_FALSE(cpus.empty());
  CHECK(SetProcessAffinity(root, {cpus.front()}).ok());
  cpu_set_t set;
  REQUIRE(sched_getaffinity(root, sizeof(set), &set) == 0);
  CHECK(CPU_COUNT(&set) == 1);
  CHECK(CPU_ISSET(cpus.front(), &set));
  const int grandchild = tree[1];
  CHECK(KillTree(root) >= 2);
  int status = 0;
  REQUIRE(waitpid(root, &status, 0) == root);
  CHECK(WIFSIGNALED(status));
  // The grandchild is gone too (re-parented, then reaped by init, or a zombie).
  usleep(100'000);
  bool alive = kill(grandchild, 0) == 0;
  if (alive) {
    // A zombie waiting for init counts as gone.
    std::vector<ProcInfo> procs = ListProcesses();
    alive = std::any_of(procs.begin(), procs.end(), [&](const ProcInfo& p) { return p.pid == grandchild; });
  }
  CHECK_FALSE(alive);
}

}  // namespace
}  // namespace dragon::agent
