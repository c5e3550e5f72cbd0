// The leader agent's side of MPI jobs (@mpi_app; docs/INTERFACES.md "MPI
// jobs"). An EXECUTABLE task whose grant.mpi is set (and not hold_only) is
// not run by the ExecutableRunner but by an MpiLauncher, which starts
//
//   mpiexec.hydra -n RANKS -ppn P -hosts H1,H2,... -outfile-pattern DIR/rank-%r.out
//       -errfile-pattern DIR/rank-%r.err [launcher_options] dragon-mpi-rank --tag=T -- EXE ARGS
//
// (or srun, or a command line of the user's: MpiLauncherConfig) in the
// task's cwd, in its own process group, with PR_SET_PDEATHSIG, and:
// - every rank's stdout/stderr lands in DIR = <run_dir>/tasks/<task_id>/ on
//   this host (hydra's mpiexec writes those files itself, also for ranks on
//   other hosts); the launcher's own messages in DIR/launcher.log;
// - rank 0's stdin is a pipe fed from TaskIO frames; rank 0's stdout file is
//   followed (inotify) and sent, whole lines, to the attached TaskIO channel,
//   at most `io_window` bytes unacknowledged;
// - each rank runs under dragon-mpi-rank (agent/mpi_rank.cc), which reports a
//   rank that fails with a tagged line in its error file: the first such
//   rank fails the job with its exit code, and the gang is ended (the
//   launcher gets `failure_grace_us` to end it itself, then its process group
//   is SIGKILLed; the wrappers die with the launcher's proxies and the ranks
//   with the wrappers, on every host);
// - cancel and timeout: SIGTERM to the launcher, SIGKILL to its group after
//   `kill_grace_us`; afterwards every process of this node that carries the
//   job's DRAGON_MPI_TASK marker in its environment is SIGKILLed
//   (KillMarkedProcesses; the agents holding the other gang nodes call it
//   too when their hold ends);
// - the result: OK (exit 0) or APP_EXCEPTION with data = MpiJobResult (the
//   job's exit code, the failing rank, each rank's host, state and files).
// Finished jobs are remembered (the newest `keep_finished`), so that TaskIO
// can still read rank 0's output and TaskLogs every rank's after the end.
//
// Never blocks; driven by the pool thread like ExecutableRunner (poll fds,
// Collect, NextWakeUs). Not thread-safe.
//
// The parts, each in its own target: the node's launcher config
// (mpi_launcher_config.h), the command line (mpi_command_line.h), the
// launcher process (mpi_launcher_process.h), rank 0's TaskIO
// (mpi_rank0_io.h), the ranks' reports (mpi_rank_reports.h), the job's
// marker (mpi_job_marker.h), its state (mpi_job.h) and its result
// (mpi_job_result.h); this class takes each job through its life with them.
#ifndef DRAGON_AGENT_MPI_LAUNCHER_H_
#define DRAGON_AGENT_MPI_LAUNCHER_H_

#include <poll.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/executable_runner.h"
#include "agent/mpi_launcher_config.h"
#include "agent/mpi_rank0_io.h"
#include "proto/agent.pb.h"
#include "proto/common.pb.h"

namespace dragon::agent {

struct MpiJob;

struct MpiLauncherOptions {
  std::string node_id;
  std::string host;     // this host, as placements name it
  std::string run_dir;  // jobs' files go to run_dir/tasks/<task id>/
  std::string run_id;   // in DRAGON_MPI_TASK
  MpiLauncherConfig config;
  int64_t kill_grace_us = 2'000'000;     // SIGTERM -> SIGKILL (cancel, timeout)
  int64_t failure_grace_us = 1'000'000;  // a rank failed: the launcher's time to end the job
  uint64_t io_window = kTaskIOWindow;
  size_t keep_finished = 1024;           // jobs remembered after their end
};

class MpiLauncher {
 public:
  using Clock = int64_t (*)();  // microseconds since the Unix epoch

  MpiLauncher(MpiLauncherOptions options, Clock now_us);
  ~MpiLauncher();  // kills what still runs (group and marked processes) and reaps it

  // Whether `task` is an MPI job this node leads.
  static bool IsMpiJob(const v1::TaskAssignment& task) {
    return task.kind() == v1::EXECUTABLE && task.grant().has_mpi() && !task.grant().hold_only();
  }

  // Starts the job (payload: ExecutableSpec; grant.mpi: placement). The pid
  // is the launcher's. An error means nothing was started.
  absl::StatusOr<int> Start(const v1::TaskAssignment& task);
  // Cancel: ends the whole gang (SIGTERM, then SIGKILL, then marked processes).
  void Kill(uint64_t task_id);
  bool Owns(uint64_t task_id) const { return jobs_.count(task_id) != 0; }
  size_t running() const { return jobs_.size(); }

  void AppendPollFds(std::vector<pollfd>* fds) const;
  // Reads what changed (output files, stdin pipes, exits), enforces
  // timeouts and failures; returns the jobs that ended.
  std::vector<ExecutableOutcome> Collect();
  std::optional<int64_t> NextWakeUs() const;

  // TaskIO frames from the head (open, stdin, eof, acks, close).
  void OnTaskIO(v1::TaskIOFrame frame);
  // Frames for the head (started, stdout, acks, errors) since the last call.
  std::vector<v1::TaskIOFrame> TakeTaskIO();
  // dragonctl logs: a job's files (running or remembered), their ends.
  std::optional<v1::TaskLogsAnswer> Logs(uint64_t task_id, std::optional<int32_t> rank,
                                         uint64_t max_bytes) const;

  const MpiLauncherOptions& options() const { return options_; }

 private:
  void ScanErrors(MpiJob* job);
  void ReadInotify();
  void Escalate(MpiJob* job, int64_t now);
  void BeginStop(MpiJob* job, int64_t now, const char* why);
  ExecutableOutcome Finish(MpiJob* job, int wait_status, int64_t now);
  void Remember(std::unique_ptr<MpiJob> job);
  v1::TaskIOStarted StartedOf(const MpiJob& job) const;
  MpiJob* Find(uint64_t task_id) const;  // running or remembered; nullptr if neither

  MpiLauncherOptions options_;
  Clock now_us_;
  int inotify_fd_ = -1;
  std::map<uint64_t, std::unique_ptr<MpiJob>> jobs_;      // running, by task id
  std::map<int, uint64_t> watches_;                       // inotify wd -> task id
  std::map<uint64_t, std::unique_ptr<MpiJob>> finished_;  // ended, remembered
  std::deque<uint64_t> finished_order_;
  std::vector<v1::TaskIOFrame> io_out_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_LAUNCHER_H_
