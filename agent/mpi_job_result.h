// What an ended MPI job tells the head: MpiJobResult (each rank's host,
// state and files, the failing rank, the job's exit code, an error that says
// why it failed) and the outcome of its task. Kept apart from the launcher's
// end-of-job cleanup, so that the rules for "failed" and its messages can be
// read in one place.
#ifndef DRAGON_AGENT_MPI_JOB_RESULT_H_
#define DRAGON_AGENT_MPI_JOB_RESULT_H_

#include <cstdint>
#include <string>

#include "agent/executable_runner.h"
#include "agent/mpi_job.h"
#include "agent/mpi_launcher_config.h"

namespace dragon::agent {

// Fills job->result from the job's end (job->wait_status: the launcher's,
// -1 if it could not be reaped; reports, failure, cancel, timeout) and
// returns the task's outcome (OK, or APP_EXCEPTION with the result as data).
ExecutableOutcome MpiJobOutcome(MpiJob* job, const MpiLauncherConfig& config,
                                const std::string& leader_node, int64_t now);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_JOB_RESULT_H_
