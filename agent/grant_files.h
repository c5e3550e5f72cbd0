// Grant files: the CPU numbers of this node's share of an MPI task, where
// dragon-mpi-bind (agent/rank_bind.cc) finds them to pin each rank:
//   /dev/shm/dragon-grants-<uid>/<run id>/<task id>.<node id>
// one line, comma-separated. Written by the agent while it holds the share
// (the leader's task runs, or a hold-only member holds), removed when it ends.
// Node-local (tmpfs), so a run directory shared between nodes is no problem.
#ifndef DRAGON_AGENT_GRANT_FILES_H_
#define DRAGON_AGENT_GRANT_FILES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dragon::agent {

std::string GrantDir(const std::string& run_id, const std::string& root = "/dev/shm");
std::string GrantFile(const std::string& run_id, const std::string& node_id, uint64_t task_id,
                      const std::string& root = "/dev/shm");
// Written whole (temporary file, then rename), mode 0600 in a 0700 directory.
absl::Status WriteGrantFile(const std::string& run_id, const std::string& node_id,
                            uint64_t task_id, const std::vector<int>& cpus,
                            const std::string& root = "/dev/shm");
void RemoveGrantFile(const std::string& run_id, const std::string& node_id, uint64_t task_id,
                     const std::string& root = "/dev/shm");
// The run's directory, once empty (agent shutdown).
void RemoveGrantDir(const std::string& run_id, const std::string& root = "/dev/shm");

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_GRANT_FILES_H_
