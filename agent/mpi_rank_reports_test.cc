// The lines dragon-mpi-rank writes, as the launcher reads them.
#include "agent/mpi_rank_reports.h"

#include <catch2/catch.hpp>
#include <string>

namespace dragon::agent {
namespace {

TEST_CASE("rank reports written by dragon-mpi-rank are parsed") {
  const std::string text =
      "noise\nsome partial dragon-mpi-rank[abc]: rank 1 on h2 (pid 77) exited with code 3\n"
      "dragon-mpi-rank[other]: rank 5 on h9 (pid 1) exited with code 9\n"
      "dragon-mpi-rank[abc]: rank 2 on h1 (pid 78) was killed by signal 11 (SIGSEGV)\n"
      "dragon-mpi-rank[abc]: rank 0 on h1 (pid 79) was stopped by signal 15 (SIGTERM, forwarded)\n"
      "dragon-mpi-rank[abc]: rank 3 on h1 could not start './nope': No such file or directory\n"
      "dragon-mpi-rank[abc]: rank 4 on h1 (pid 80) exited with code 4";  // unfinished line
  auto reports = ParseRankReports(text, "abc");
  REQUIRE(reports.size() == 4);
  CHECK(reports[0].rank == 1);
  CHECK(reports[0].host == "h2");
  CHECK(reports[0].pid == 77);
  CHECK(reports[0].state == "exited");
  CHECK(reports[0].exit_code == 3);
  CHECK(reports[1].state == "signaled");
  CHECK(reports[1].signal == 11);
  CHECK(reports[2].state == "stopped");
  CHECK(reports[2].signal == 15);
  CHECK(reports[3].state == "unstarted");
  CHECK(reports[3].exit_code == 127);
  CHECK(reports[3].text == "rank 3 on h1 could not start './nope': No such file or directory");
}

}  // namespace
}  // namespace dragon::agent
