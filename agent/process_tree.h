// A task's process tree as the agent enforces limits on it: the process that
// runs it (a Python worker, an executable) and every descendant, found from
// /proc (parent links, and the root's process group for children whose
// parent already died). Used for the memory watchdog (resident memory of the
// whole tree), for kills that leave nothing behind, and for CPU affinity.
#ifndef DRAGON_AGENT_PROCESS_TREE_H_
#define DRAGON_AGENT_PROCESS_TREE_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dragon::agent {

// One process as /proc/PID/stat shows it.
struct ProcInfo {
  int pid = 0;
  int ppid = 0;
  int pgid = 0;
  uint64_t rss_pages = 0;
};

// Every process of /proc (`proc_dir` for tests).
std::vector<ProcInfo> ListProcesses(const std::string& proc_dir = "/proc");

// Parses the content of a /proc/PID/stat file (the command may hold spaces
// and parentheses). False when malformed.
bool ParseStat(const std::string& stat, ProcInfo* out);

// `root` and its descendants in `procs` (by parent links), plus the
// processes of `root`'s process group when `root` leads one; root first.
std::vector<int> TreeOf(int root, const std::vector<ProcInfo>& procs);

// Resident memory (RSS, bytes) of the tree of `root` (shared pages are
// counted once per process, as RSS does).
uint64_t TreeRssBytes(int root, const std::string& proc_dir = "/proc");

// SIGKILLs the tree of `root`: its process group first, then every
// descendant that left it (found before anything is killed, since a killed
// parent's children are re-parented). Returns how many processes were
// signalled.
int KillTree(int root, const std::string& proc_dir = "/proc");

// Sets the CPU affinity of every thread of `pid` to `cpus` (CPU numbers).
absl::Status SetProcessAffinity(int pid, const std::vector<int>& cpus,
                                const std::string& proc_dir = "/proc");

// The CPU numbers of this process's affinity, ascending: the agent's cores,
// which grants index (ResourceGrant.cpus = indices into this list).
std::vector<int> AffinityCpus();

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_PROCESS_TREE_H_
