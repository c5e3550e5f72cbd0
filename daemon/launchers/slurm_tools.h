// What the Slurm and PBS launchers read from and give to the batch system's
// commands, as pure functions (unit-tested without a cluster): walltimes,
// the CPUs of a grant, host lists from scontrol, job states from squeue and
// qstat, and which pending reasons mean a job can never start.
#ifndef DRAGON_DAEMON_LAUNCHERS_SLURM_TOOLS_H_
#define DRAGON_DAEMON_LAUNCHERS_SLURM_TOOLS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dragon::daemon {

// A walltime in one of Slurm's formats (what sbatch --time takes): MINUTES,
// MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES,
// DAYS-HOURS:MINUTES:SECONDS; more than zero. Errors name `flag` and the formats.
absl::StatusOr<absl::Duration> ParseSlurmTime(const std::string& text, const std::string& flag);

// HH:MM:SS (hours may pass 24), as PBS's walltime= takes it.
std::string FormatWalltime(absl::Duration d);

// The smallest CPU count of $SLURM_JOB_CPUS_PER_NODE ("2(x3),1" -> 1, "16" -> 16);
// 0 when it is empty or malformed.
int MinCpusPerNode(const std::string& cpus_per_node);

// The lines of `scontrol show hostnames LIST`: one host each. Errors name a
// line that is not a host name, or an empty list.
absl::StatusOr<std::vector<std::string>> ParseHostnames(const std::string& output);

// Where a batch job is, whatever the batch system calls its state.
enum class JobPhase { kPending, kRunning, kEnded };

struct JobStatus {
  JobPhase phase = JobPhase::kPending;
  std::string state;     // the batch system's word: PENDING, RUNNING, CANCELLED / Q, R, C
  std::string reason;    // why it waits or ended (squeue %r, qstat's comment); may be ""
  std::string nodelist;  // Slurm's compressed list (n[1-2]) or PBS's exec_host
};

// A Slurm job state (squeue %T) as a phase: RUNNING runs; PENDING,
// CONFIGURING, REQUEUED, SUSPENDED... wait; COMPLETING, COMPLETED,
// CANCELLED, FAILED, TIMEOUT, NODE_FAIL, PREEMPTED... ended.
JobPhase SlurmJobPhase(const std::string& state);

// One line of `squeue -h -o %T|%r|%N`. InvalidArgument for anything else.
absl::StatusOr<JobStatus> ParseSqueueLine(const std::string& line);

// Pending reasons after which a job never starts by itself (the partition
// cannot hold it, a bad account or constraint...): dragond cancels it and
// says why rather than waiting out --start-timeout.
bool IsHopelessPendingReason(const std::string& reason);

// `qstat -f JOBID` (Torque, PBS Pro, and Slurm's qstat wrapper): job_state
// (Q, H, W, T, S wait; R runs; E, C, F, X ended), exec_host (n1/0+n2/0*2 ->
// "n1,n2") and comment. InvalidArgument without a job_state line.
absl::StatusOr<JobStatus> ParseQstatFull(const std::string& output);

// The hosts of a PBS exec_host value (n1/0+n1/1+n2/0*2 -> n1, n2).
std::vector<std::string> ExecHostNodes(const std::string& exec_host);

// Node names in `pbsnodes -a` output (the lines that do not start with space).
std::vector<std::string> ParsePbsnodes(const std::string& output);

// The programs of `programs` that no directory of `path` (a $PATH value)
// holds as an executable file; names with a '/' are checked as they are.
std::vector<std::string> MissingPrograms(const std::vector<std::string>& programs,
                                         const std::string& path);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_SLURM_TOOLS_H_
