// What dragon-mpi-rank (agent/mpi_rank.cc) reports about a rank that did
// not exit 0: a line tagged with the job's random tag in the rank's error
// file, so that a program's own output cannot pass for a report.
#ifndef DRAGON_AGENT_MPI_RANK_REPORTS_H_
#define DRAGON_AGENT_MPI_RANK_REPORTS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace dragon::agent {

// A rank's report as dragon-mpi-rank writes it (see agent/mpi_rank.cc).
struct RankReport {
  uint32_t rank = 0;
  std::string host;
  int pid = 0;
  std::string state;  // "exited", "signaled", "stopped", "unstarted"
  int exit_code = 0;
  int signal = 0;
  std::string text;   // the line, without the tag
};
// Every report tagged `tag` in `text` (complete lines only).
std::vector<RankReport> ParseRankReports(const std::string& text, const std::string& tag);

// A new job's tag: 16 random hex digits.
std::string NewRankReportTag();

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_RANK_REPORTS_H_
