#include "agent/task_env.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace dragon::agent {
namespace {

std::string Join(const std::vector<std::string>& parts) {
  // Parsl joins with " " every part, the (possibly empty) launcher options
  // included: its prefixes end with a space when there are none.
  return absl::StrJoin(parts, " ");
}

}  // namespace

std::string MpiPrefixConfig::Describe() const {
  switch (kind) {
    case Kind::kMpiexec:
      return absl::StrCat("mpiexec (", mpiexec, ")");
    case Kind::kSrun:
      return "srun";
    case Kind::kAprun:
      return "aprun";
    case Kind::kCommand:
      return absl::StrCat("command '", command, "'");
  }
  return "?";
}

MpiPrefixConfig MpiPrefixConfigFrom(const GetEnvFn& getenv, const std::string& self_dir,
                                    const std::function<bool(const std::string&)>& in_path) {
  MpiPrefixConfig c;
  const char* launcher = getenv("DRAGON_MPI_LAUNCHER");
  const std::string l = launcher == nullptr ? "" : launcher;
  if (l.empty()) {
    c.kind = getenv("SLURM_JOB_ID") != nullptr && in_path("srun")
                 ? MpiPrefixConfig::Kind::kSrun
                 : MpiPrefixConfig::Kind::kMpiexec;
  } else if (l == "hydra" || l == "mpiexec") {
    c.kind = MpiPrefixConfig::Kind::kMpiexec;
  } else if (l == "srun") {
    c.kind = MpiPrefixConfig::Kind::kSrun;
  } else if (l == "aprun") {
    c.kind = MpiPrefixConfig::Kind::kAprun;
  } else {
    c.kind = MpiPrefixConfig::Kind::kCommand;
    c.command = l;
  }
  if (const char* m = getenv("DRAGON_MPIEXEC"); m != nullptr && *m != '\0') {
    c.mpiexec = m;
  } else {
    c.mpiexec = in_path("mpiexec.hydra") ? "mpiexec.hydra" : "mpiexec";
  }
  const char* bind = getenv("DRAGON_MPI_BIND");
  if (bind != nullptr && *bind != '\0') {
    c.binder = std::string(bind) == "none" ? "" : bind;
  } else if (const std::string path = absl::StrCat(self_dir, "/dragon-mpi-bind");
             !self_dir.empty() && access(path.c_str(), X_OK) == 0) {
    c.binder = path;
  }
  return c;
}

std::vector<int> GrantedCpus(const v1::ResourceGrant& grant, const std::vector<int>& cpu_ids) {
  std::vector<int> out;
  out.reserve(grant.cpus_size());
  for (uint32_t i : grant.cpus()) {
    if (i < cpu_ids.size()) out.push_back(cpu_ids[i]);
  }
  return out;
}

EnvList ParslMpiEnv(const v1::MpiPlacement& p, const MpiPrefixConfig& config, uint64_t task_id) {
  EnvList env;
  const std::string hosts = absl::StrJoin(p.hosts(), ",");
  const std::string nodes = absl::StrCat(p.hosts_size());
  const uint32_t ppn_value =
      p.ranks_per_node() > 0
          ? p.ranks_per_node()
          : (p.hosts_size() > 0 ? (p.ranks() + p.hosts_size() - 1) / p.hosts_size() : p.ranks());
  const std::string ppn = absl::StrCat(ppn_value);
  const std::string ranks = absl::StrCat(p.ranks());
  const std::string& opts = p.launcher_options();
  env.emplace_back("PARSL_NUM_NODES", nodes);
  env.emplace_back("PARSL_RANKS_PER_NODE", ppn);
  env.emplace_back("PARSL_NUM_RANKS", ranks);
  env.emplace_back("PARSL_MPI_NODELIST", hosts);
  if (!opts.empty()) env.emplace_back("PARSL_LAUNCHER_OPTIONS", opts);
  // The rank binder goes after the launcher's options, in front of the
  // program: it pins each rank to its share of the cores its node reserved.
  const std::string bind =
      config.binder.empty() ? "" : absl::StrCat(" ", config.binder, " ", task_id, " --");
  const std::string mpiexec = Join({config.mpiexec, "-n", ranks, "-ppn", ppn, "-hosts", hosts, opts});
  const std::string srun = Join({"srun", "--ntasks", ranks, "--ntasks-per-node", ppn, "--nodelist",
                                 hosts, "--nodes", nodes, opts});
  const std::string aprun = Join({"aprun", "-n", ranks, "-N", ppn, "-node-list", hosts, opts});
  env.emplace_back("PARSL_MPIEXEC_PREFIX", mpiexec + bind);
  env.emplace_back("PARSL_SRUN_PREFIX", srun + bind);
  env.emplace_back("PARSL_APRUN_PREFIX", aprun + bind);
  std::string chosen;
  switch (config.kind) {
    case MpiPrefixConfig::Kind::kMpiexec:
      chosen = mpiexec;
      break;
    case MpiPrefixConfig::Kind::kSrun:
      chosen = srun;
      break;
    case MpiPrefixConfig::Kind::kAprun:
      chosen = aprun;
      break;
    case MpiPrefixConfig::Kind::kCommand:
      chosen = Join({absl::StrReplaceAll(config.command, {{"{ranks}", ranks},
                                                          {"{ranks_per_node}", ppn},
                                                          {"{nodes}", nodes},
                                                          {"{hosts}", hosts}}),
                     opts});
      break;
  }
  env.emplace_back("PARSL_MPI_PREFIX", chosen + bind);
  return env;
}

EnvList TaskEnvironment(const v1::TaskAssignment& task, const NodeEnv& node,
                        bool plain_gpu_hiding) {
  EnvList env;
  if (!task.has_grant()) {
    if (node.has_gpus && plain_gpu_hiding) {
      env.emplace_back("CUDA_VISIBLE_DEVICES", "");
      env.emplace_back("ROCR_VISIBLE_DEVICES", "");
    }
    return env;
  }
  const v1::ResourceGrant& g = task.grant();
  if (g.gpus_size() > 0 || (node.has_gpus && plain_gpu_hiding) ||
      (node.has_gpus && g.cpus_size() > 0)) {
    const std::string gpus = absl::StrJoin(g.gpus(), ",");
    env.emplace_back("CUDA_VISIBLE_DEVICES", gpus);
    env.emplace_back("ROCR_VISIBLE_DEVICES", gpus);
  }
  if (g.cpus_size() > 0) {
    env.emplace_back("DRAGON_CPUS", absl::StrJoin(GrantedCpus(g, node.cpu_ids), ","));
    env.emplace_back("DRAGON_GPUS", absl::StrJoin(g.gpus(), ","));
    if (g.memory_bytes() > 0) env.emplace_back("DRAGON_MEMORY_LIMIT", absl::StrCat(g.memory_bytes()));
  }
  if (g.has_mpi() && !g.hold_only()) {
    for (auto& kv : ParslMpiEnv(g.mpi(), node.mpi, task.task_id())) env.push_back(std::move(kv));
    env.emplace_back("DRAGON_MPI_TASK", absl::StrCat(node.run_id, "/", task.task_id()));
  }
  return env;
}

EnvList WorkerBaseEnvironment(const NodeEnv& node) {
  EnvList env;
  if (node.has_gpus) {
    env.emplace_back("CUDA_VISIBLE_DEVICES", "");
    env.emplace_back("ROCR_VISIBLE_DEVICES", "");
  }
  if (!node.shm_pool_path.empty()) env.emplace_back("DRAGON_SHM_POOL", node.shm_pool_path);
  if (!node.data_socket.empty()) env.emplace_back("DRAGON_AGENT_DATA_SOCKET", node.data_socket);
  return env;
}

}  // namespace dragon::agent
