// One MPI job this node leads, as the launcher keeps it from its start
// until it is forgotten (MpiLauncher remembers ended jobs for TaskIO and
// dragonctl logs): what was started, how it is being ended, what the ranks
// reported, and rank 0's TaskIO.
#ifndef DRAGON_AGENT_MPI_JOB_H_
#define DRAGON_AGENT_MPI_JOB_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/mpi_launcher_config.h"
#include "agent/mpi_rank0_io.h"
#include "agent/mpi_rank_reports.h"
#include "proto/agent.pb.h"
#include "proto/common.pb.h"

namespace dragon::agent {

struct MpiJob {
  MpiJob(uint64_t task_id, uint64_t io_window) : task_id(task_id), io(task_id, io_window) {}

  uint64_t task_id = 0;
  pid_t pid = 0;     // the launcher's, also its process group
  int pid_fd = -1;   // polled for the launcher's exit
  int wd = -1;       // inotify watch of dir
  std::string dir, tag, marker, program;
  std::vector<std::string> launcher_argv;
  v1::MpiPlacement placement;
  std::vector<std::string> rank_hosts;
  MpiLauncherKind kind = MpiLauncherKind::kHydra;
  std::string stdout_path;   // followed for TaskIO
  std::string stdout_name;   // its name in dir
  std::string launcher_log;  // the launcher's own output
  int64_t start_us = 0;
  int64_t end_us = 0;
  int64_t deadline_us = 0;
  uint32_t timeout_s = 0;
  // Ending.
  bool cancelled = false;
  bool timed_out = false;
  bool stopping = false;     // SIGTERM sent (cancel, timeout)
  int64_t kill_at_us = 0;    // SIGKILL the group then; 0 = not planned
  bool group_killed = false;
  std::optional<RankReport> failure;  // the first rank that failed
  std::map<uint32_t, RankReport> reports;
  std::map<std::string, uint64_t> err_read;    // error file name -> bytes scanned
  std::map<std::string, std::string> err_carry;  // its unfinished last line
  bool ended = false;
  int wait_status = 0;
  v1::MpiJobResult result;
  MpiRank0IO io;

  // The files in dir where dragon-mpi-rank reports ranks.
  std::vector<std::string> ErrFiles() const;
};

// A rank's output file in a job's dir ("out" or "err").
std::string RankFile(const std::string& dir, uint32_t rank, const char* ext);

// The last `max` bytes of a file (and its size); "" if it cannot be read.
std::string ReadTail(const std::string& path, uint64_t max, uint64_t* size);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_JOB_H_
