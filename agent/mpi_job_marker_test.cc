// KillMarkedProcesses with real processes of this test.
#include "agent/mpi_job_marker.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace dragon::agent {
namespace {

TEST_CASE("KillMarkedProcesses ends the processes carrying the marker, and only those") {
  const std::string marker = absl::StrCat("kill-test-", getpid(), "/9");
  auto spawn = [](const std::string& env) {
    pid_t pid = fork();
    if (pid == 0) {
      std::string e = env;
      char* envp[] = {e.data(), nullptr};
      char* argv[] = {const_cast<char*>("sleep"), const_cast<char*>("30"), nullptr};
      execve("/bin/sleep", argv, envp);
      _exit(127);
    }
    return pid;
  };
  const pid_t marked = spawn(absl::StrCat("DRAGON_MPI_TASK=", marker));
  const pid_t other = spawn(absl::StrCat("DRAGON_MPI_TASK=", marker, "0"));
  usleep(100'000);
  std::vector<int> killed = KillMarkedProcesses(marker);
  CHECK(killed == std::vector<int>{marked});
  int status = 0;
  REQUIRE(waitpid(marked, &status, 0) == marked);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
  CHECK(waitpid(other, &status, WNOHANG) == 0);  // still running
  kill(other, SIGKILL);
  waitpid(other, &status, 0);
}

}  // namespace
}  // namespace dragon::agent
