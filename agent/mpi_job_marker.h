// Every process of an MPI job carries DRAGON_MPI_TASK=<run_id>/<task_id>
// in its environment (the launcher's, passed on to the ranks on every host),
// so that what a job leaves behind, outside the launcher's process group or
// on another gang node, can still be found and killed.
#ifndef DRAGON_AGENT_MPI_JOB_MARKER_H_
#define DRAGON_AGENT_MPI_JOB_MARKER_H_

#include <cstdint>
#include <string>
#include <vector>

namespace dragon::agent {

// The variable that carries the marker.
inline constexpr char kMpiTaskMarkerEnv[] = "DRAGON_MPI_TASK";

// The value of DRAGON_MPI_TASK for a job: "<run_id>/<task_id>".
std::string MpiTaskMarker(const std::string& run_id, uint64_t task_id);
// SIGKILLs every process of this host (that this user may signal) whose
// environment holds DRAGON_MPI_TASK=`marker`, except this process (the agent
// may carry it too); returns the pids killed.
std::vector<int> KillMarkedProcesses(const std::string& marker, const std::string& proc_dir = "/proc");

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_JOB_MARKER_H_
