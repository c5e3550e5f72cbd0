// Grant files: the CPU numbers of this node's share of an MPI task, where
// dragon-mpi-bind (agent/rank_bind.cc) finds them to pin each rank:
//   /dev/shm/dragon-grants-<uid>/<run id>/<task id>.<node id>
// one line, comma-separated. Written by the agent while it holds the share
// (the leader's task runs, or a hold-only member holds), removed when it ends.
// Node-local (tmpfs), so a run directory shared between nodes is no problem.
// Beside them, owner.<node id> names the agent that wrote them (its pid and
// the process's start time, so that a reused pid is not taken for it): an
// agent killed with kill -9 cannot remove its files, so whoever comes next on
// the node (the next agent to start, an agent leaving, dragond at its exit)
// removes the files of owners that are gone (SweepStaleGrants).
#ifndef DRAGON_COMMON_GRANT_FILES_H_
#define DRAGON_COMMON_GRANT_FILES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dragon::common {

std::string GrantDir(const std::string& run_id, const std::string& root = "/dev/shm");
std::string GrantFile(const std::string& run_id, const std::string& node_id, uint64_t task_id,
                      const std::string& root = "/dev/shm");
// Written whole (temporary file, then rename), mode 0600 in a 0700 directory.
absl::Status WriteGrantFile(const std::string& run_id, const std::string& node_id,
                            uint64_t task_id, const std::vector<int>& cpus,
                            const std::string& root = "/dev/shm");
void RemoveGrantFile(const std::string& run_id, const std::string& node_id, uint64_t task_id,
                     const std::string& root = "/dev/shm");
// This agent's owner file and the run's directory, once empty (agent shutdown).
void RemoveGrantDir(const std::string& run_id, const std::string& node_id,
                    const std::string& root = "/dev/shm");

// Removes, in every run directory of this user, the grant files and owner file
// of each node whose owner process is no longer running, then the directories
// left empty. Files of live agents are kept. Returns how many files it removed.
int SweepStaleGrants(const std::string& root = "/dev/shm");

}  // namespace dragon::common

#endif  // DRAGON_COMMON_GRANT_FILES_H_
