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
#ifndef DRAGON_AGENT_MPI_LAUNCHER_H_
#define DRAGON_AGENT_MPI_LAUNCHER_H_

#include <poll.h>
#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/executable_runner.h"
#include "proto/agent.pb.h"
#include "proto/common.pb.h"

namespace dragon::agent {

// Unacknowledged TaskIO data allowed each way (stdin toward rank 0, stdout
// toward the client); the head refuses a client that sends more.
inline constexpr uint64_t kTaskIOWindow = 256u << 10;

enum class MpiLauncherKind { kHydra, kSrun, kCommand };

// How MPI jobs are launched on this node. From the agent's environment
// (MpiLauncherConfigFromEnv), so that dragond's launchers can pass it on
// (dragond start --agent-env NAME):
//   DRAGON_MPI_LAUNCHER     "hydra" (MPICH's mpiexec; the default outside
//                           Slurm), "srun" (the default inside a Slurm job),
//                           or a command line of the user's, whose words may
//                           hold {ranks} {ranks_per_node} {nodes} {hosts}
//                           (comma-separated) and {hostfile} (one host per
//                           rank), e.g. "mpirun -np {ranks} --host {hosts}"
//   DRAGON_MPIEXEC          hydra's mpiexec (default mpiexec.hydra, else mpiexec)
//   DRAGON_MPI_RANK_WRAPPER dragon-mpi-rank (default: next to dragon-agent);
//                           "none": no wrapper (no per-rank exit codes)
//   HYDRA_LAUNCHER_EXEC     hydra's bootstrap to other hosts (default ssh);
//                           read by hydra itself, passed as -launcher-exec
struct MpiLauncherConfig {
  MpiLauncherKind kind = MpiLauncherKind::kHydra;
  std::string mpiexec = "mpiexec.hydra";
  std::string srun = "srun";
  std::vector<std::string> command;  // kCommand: the template's words
  std::string rank_wrapper;          // "" = none
  std::string launcher_exec;         // hydra -launcher-exec; "" = hydra's default

  // "hydra (mpiexec.hydra, bootstrap ssh)" etc., for logs and errors.
  std::string Describe() const;
};

using GetEnv = std::function<const char*(const char*)>;
// `self_dir`: where dragon-agent is (the wrapper's default place); `in_path`
// says whether a program is found in PATH.
absl::StatusOr<MpiLauncherConfig> MpiLauncherConfigFromEnv(
    const GetEnv& getenv, const std::string& self_dir,
    const std::function<bool(const std::string&)>& in_path);
absl::StatusOr<MpiLauncherConfig> MpiLauncherConfigFromEnv();  // this process's

// Words of a command line ("a 'b c' d\ e" -> a, b c, d e); no shell expansion.
absl::StatusOr<std::vector<std::string>> SplitCommandLine(const std::string& line);

// The host of each rank under `placement` (hydra's -ppn block placement:
// ranks 0..P-1 on hosts[0], ...; P = ranks_per_node, or ranks spread evenly).
std::vector<std::string> RankHosts(const v1::MpiPlacement& placement);
// Ranks per node the launcher is told: placement.ranks_per_node, else
// ceil(ranks / hosts).
uint32_t RanksPerNode(const v1::MpiPlacement& placement);

// The launcher with its placement, up to the program: what an app puts in
// front of its program (PARSL_MPI_PREFIX). `hostfile` replaces {hostfile}
// in a user's command line ("" = refused when the template uses it).
absl::StatusOr<std::vector<std::string>> MpiLaunchPrefix(const MpiLauncherConfig& config,
                                                         const v1::MpiPlacement& placement,
                                                         const std::string& hostfile = "");

// A job's whole command: the prefix, the per-rank output files in `dir`
// (hydra, srun), launcher_options, the wrapper with `tag`, then `program`.
absl::StatusOr<std::vector<std::string>> MpiJobArgv(const MpiLauncherConfig& config,
                                                    const v1::MpiPlacement& placement,
                                                    const std::string& dir, const std::string& tag,
                                                    const std::vector<std::string>& program);

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

// The value of DRAGON_MPI_TASK for a job: "<run_id>/<task_id>".
std::string MpiTaskMarker(const std::string& run_id, uint64_t task_id);
// SIGKILLs every process of this host (that this user may signal) whose
// environment holds DRAGON_MPI_TASK=`marker`, except `spare` (e.g. the agent);
// returns the pids killed.
std::vector<int> KillMarkedProcesses(const std::string& marker, const std::string& proc_dir = "/proc");

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
  struct Job;
  struct Finished;

  void Pump(Job* job);           // stdin writes, stdout sends
  void SendStdout(Job* job);
  void WriteStdin(Job* job);
  void ScanErrors(Job* job, int rank_file);
  void ReadInotify();
  void Escalate(Job* job, int64_t now);
  void BeginStop(Job* job, int64_t now, const char* why);
  ExecutableOutcome Finish(Job* job, int wait_status, int64_t now);
  void Remember(std::unique_ptr<Job> job);
  void Error(uint64_t task_id, uint64_t channel, const std::string& error);
  v1::TaskIOStarted StartedOf(const Job& job) const;

  MpiLauncherOptions options_;
  Clock now_us_;
  int inotify_fd_ = -1;
  std::map<uint64_t, std::unique_ptr<Job>> jobs_;       // running, by task id
  std::map<int, uint64_t> watches_;                     // inotify wd -> task id
  std::map<uint64_t, std::unique_ptr<Job>> finished_;   // ended, remembered
  std::deque<uint64_t> finished_order_;
  std::vector<v1::TaskIOFrame> io_out_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_LAUNCHER_H_
