// The command line of an MPI job, built from the node's launcher config and
// the job's placement: pure functions (no files, no processes), so that what
// mpiexec, srun or a user's launcher is told can be checked on its own.
#ifndef DRAGON_AGENT_MPI_COMMAND_LINE_H_
#define DRAGON_AGENT_MPI_COMMAND_LINE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/mpi_launcher_config.h"
#include "proto/common.pb.h"

namespace dragon::agent {

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

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_COMMAND_LINE_H_
