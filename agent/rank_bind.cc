// dragon-mpi-bind: pins one MPI rank to its share of the cores its node
// reserved for the task, then execs the program. $PARSL_MPI_PREFIX ends with
//
//   dragon-mpi-bind TASK_ID --
//
// so that `$PARSL_MPI_PREFIX ./prog args` runs every rank as
// `dragon-mpi-bind TASK_ID -- ./prog args`, on every node of the gang. The
// agent holding the node's share writes the CPU numbers it granted to
//   /dev/shm/dragon-grants-<uid>/<run id>/<task id>.<node id>
// (common/grant_files.h); the run id comes from $DRAGON_MPI_TASK
// (<run id>/<task id>), which the launcher forwards to every rank. The rank's
// place on its node comes from the launcher: MPI_LOCALRANKID (hydra),
// SLURM_LOCALID (srun), OMPI_COMM_WORLD_LOCAL_RANK, PALS_LOCAL_RANKID; the
// number of ranks on the node likewise (else $PARSL_RANKS_PER_NODE). Rank i
// of n gets the i-th of n equal slices of the node's CPUs (all of them when
// there are fewer CPUs than ranks: an oversubscribed node).
//
// Anything missing (no file, no local rank) means no binding: the program is
// run as it is, pinned as its parent was. Never fails a rank for binding.
#include <dirent.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

namespace {

const char* FirstEnv(std::initializer_list<const char*> names) {
  for (const char* n : names) {
    const char* v = getenv(n);
    if (v != nullptr && *v != '\0') return v;
  }
  return nullptr;
}

bool ParseInt(const char* s, long* out) {
  if (s == nullptr) return false;
  char* end = nullptr;
  *out = strtol(s, &end, 10);
  return end != s && *end == '\0';
}

std::vector<int> ParseCpus(const std::string& line) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < line.size()) {
    size_t next = line.find(',', pos);
    if (next == std::string::npos) next = line.size();
    long v = 0;
    const std::string part = line.substr(pos, next - pos);
    if (ParseInt(part.c_str(), &v) && v >= 0 && v < CPU_SETSIZE) out.push_back(static_cast<int>(v));
    pos = next + 1;
  }
  return out;
}

// The node's granted CPUs for the task: every agent's file for it on this
// host (one normally; several when agents share a host), in name order.
std::vector<int> NodeCpus(const std::string& run_id, const std::string& task_id) {
  const std::string dir = "/dev/shm/dragon-grants-" + std::to_string(getuid()) + "/" + run_id;
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    const std::string prefix = task_id + ".";
    while (dirent* e = readdir(d)) {
      if (strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) names.push_back(e->d_name);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  std::vector<int> cpus;
  for (const std::string& n : names) {
    std::ifstream in(dir + "/" + n);
    std::string line;
    std::getline(in, line);
    for (int c : ParseCpus(line)) cpus.push_back(c);
  }
  return cpus;
}

void Bind(const char* task_arg) {
  const char* marker = getenv("DRAGON_MPI_TASK");
  if (marker == nullptr) return;
  const std::string m = marker;
  const size_t slash = m.rfind('/');
  if (slash == std::string::npos) return;
  const std::string run_id = m.substr(0, slash);
  const std::vector<int> cpus = NodeCpus(run_id, task_arg);
  if (cpus.empty()) return;
  long local = 0, local_size = 0;
  if (!ParseInt(FirstEnv({"MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK",
                          "PALS_LOCAL_RANKID"}),
                &local)) {
    return;
  }
  if (!ParseInt(FirstEnv({"MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PALS_LOCAL_SIZE",
                          "PARSL_RANKS_PER_NODE"}),
                &local_size) ||
      local_size < 1) {
    local_size = 1;
  }
  const size_t n = cpus.size();
  const size_t per = std::max<size_t>(1, n / static_cast<size_t>(local_size));
  cpu_set_t set;
  CPU_ZERO(&set);
  std::string list;
  if (n < static_cast<size_t>(local_size)) {
    for (int c : cpus) CPU_SET(c, &set);  // oversubscribed: the ranks share the node's cores
  } else {
    for (size_t i = 0; i < per; ++i) {
      const int c = cpus[(static_cast<size_t>(local) * per + i) % n];
      CPU_SET(c, &set);
      list += (list.empty() ? "" : ",") + std::to_string(c);
    }
  }
  if (sched_setaffinity(0, sizeof(set), &set) == 0 && !list.empty()) {
    setenv("DRAGON_RANK_CPUS", list.c_str(), 1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // dragon-mpi-bind TASK_ID -- PROGRAM [ARGS...]
  if (argc < 4 || strcmp(argv[2], "--") != 0) {
    fprintf(stderr, "usage: dragon-mpi-bind TASK_ID -- PROGRAM [ARGS...] (put in front of an MPI "
                    "rank by $PARSL_MPI_PREFIX)\n");
    return 2;
  }
  Bind(argv[1]);
  execvp(argv[3], argv + 3);
  fprintf(stderr, "dragon-mpi-bind: cannot execute %s: %s\n", argv[3], strerror(errno));
  return 127;
}
