#include "agent/task_env.h"

#include <catch2/catch.hpp>
#include <map>

namespace dragon::agent {
namespace {

std::map<std::string, std::string> AsMap(const EnvList& env) {
  return std::map<std::string, std::string>(env.begin(), env.end());
}

v1::TaskAssignment Placed(std::vector<uint32_t> cpus, std::vector<std::string> gpus) {
  v1::TaskAssignment t;
  t.set_task_id(9);
  for (uint32_t c : cpus) t.mutable_grant()->add_cpus(c);
  for (auto& g : gpus) t.mutable_grant()->add_gpus(g);
  return t;
}

TEST_CASE("Parsl's variables for an MPI placement, in Parsl's exact forms", "[task_env]") {
  v1::MpiPlacement p;
  p.add_hosts("h1");
  p.add_hosts("h2");
  p.set_ranks_per_node(2);
  p.set_ranks(4);
  MpiPrefixConfig c;
  c.mpiexec = "mpiexec";
  auto env = AsMap(ParslMpiEnv(p, c, 9));
  CHECK(env["PARSL_NUM_NODES"] == "2");
  CHECK(env["PARSL_RANKS_PER_NODE"] == "2");
  CHECK(env["PARSL_NUM_RANKS"] == "4");
  CHECK(env["PARSL_MPI_NODELIST"] == "h1,h2");
  CHECK(env.count("PARSL_LAUNCHER_OPTIONS") == 0);
  // Parsl joins every part with a space, the empty options included.
  CHECK(env["PARSL_MPIEXEC_PREFIX"] == "mpiexec -n 4 -ppn 2 -hosts h1,h2 ");
  CHECK(env["PARSL_SRUN_PREFIX"] == "srun --ntasks 4 --ntasks-per-node 2 --nodelist h1,h2 --nodes 2 ");
  CHECK(env["PARSL_APRUN_PREFIX"] == "aprun -n 4 -N 2 -node-list h1,h2 ");
  CHECK(env["PARSL_MPI_PREFIX"] == env["PARSL_MPIEXEC_PREFIX"]);

  p.set_launcher_options("-bind-to core");
  c.kind = MpiPrefixConfig::Kind::kSrun;
  c.binder = "/b/dragon-mpi-bind";
  env = AsMap(ParslMpiEnv(p, c, 9));
  CHECK(env["PARSL_LAUNCHER_OPTIONS"] == "-bind-to core");
  CHECK(env["PARSL_MPI_PREFIX"] ==
        "srun --ntasks 4 --ntasks-per-node 2 --nodelist h1,h2 --nodes 2 -bind-to core "
        "/b/dragon-mpi-bind 9 --");
  c.kind = MpiPrefixConfig::Kind::kCommand;
  c.command = "mpirun -np {ranks} --host {hosts} --map-by ppr:{ranks_per_node}:node";
  c.binder.clear();
  env = AsMap(ParslMpiEnv(p, c, 9));
  CHECK(env["PARSL_MPI_PREFIX"] == "mpirun -np 4 --host h1,h2 --map-by ppr:2:node -bind-to core");
}

TEST_CASE("the launcher from the environment: Slurm, explicit choices, a command",
          "[task_env]") {
  std::map<std::string, std::string> vars;
  auto get = [&vars](const char* n) -> const char* {
    auto it = vars.find(n);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
  auto none = [](const std::string&) { return false; };
  auto all = [](const std::string&) { return true; };
  CHECK(MpiPrefixConfigFrom(get, "", none).kind == MpiPrefixConfig::Kind::kMpiexec);
  CHECK(MpiPrefixConfigFrom(get, "", none).mpiexec == "mpiexec");
  CHECK(MpiPrefixConfigFrom(get, "", all).mpiexec == "mpiexec.hydra");
  vars["SLURM_JOB_ID"] = "7";
  CHECK(MpiPrefixConfigFrom(get, "", all).kind == MpiPrefixConfig::Kind::kSrun);
  vars["DRAGON_MPI_LAUNCHER"] = "hydra";
  CHECK(MpiPrefixConfigFrom(get, "", all).kind == MpiPrefixConfig::Kind::kMpiexec);
  vars["DRAGON_MPI_LAUNCHER"] = "mpirun -np {ranks}";
  auto c = MpiPrefixConfigFrom(get, "", all);
  CHECK(c.kind == MpiPrefixConfig::Kind::kCommand);
  CHECK(c.command == "mpirun -np {ranks}");
  vars["DRAGON_MPI_BIND"] = "none";
  CHECK(MpiPrefixConfigFrom(get, "/nonexistent", all).binder.empty());
}

TEST_CASE("a task's environment: GPUs granted, hidden, CPU numbers, MPI", "[task_env]") {
  NodeEnv node;
  node.run_id = "r1";
  node.has_gpus = true;
  node.cpu_ids = {4, 5, 6, 7};
  v1::TaskAssignment plain;
  plain.set_task_id(1);
  CHECK(TaskEnvironment(plain, node, false).empty());
  auto hidden = AsMap(TaskEnvironment(plain, node, true));
  CHECK(hidden["CUDA_VISIBLE_DEVICES"].empty());
  CHECK(hidden.count("ROCR_VISIBLE_DEVICES") == 1);

  auto env = AsMap(TaskEnvironment(Placed({1, 3}, {"1"}), node, false));
  CHECK(env["CUDA_VISIBLE_DEVICES"] == "1");
  CHECK(env["ROCR_VISIBLE_DEVICES"] == "1");
  CHECK(env["DRAGON_CPUS"] == "5,7");
  CHECK(env.count("PARSL_MPI_PREFIX") == 0);
  CHECK(GrantedCpus(Placed({0, 9}, {}).grant(), node.cpu_ids) == std::vector<int>{4});

  auto mpi = Placed({0, 1}, {});
  mpi.mutable_grant()->mutable_mpi()->add_hosts("vm");
  mpi.mutable_grant()->mutable_mpi()->set_ranks(2);
  mpi.mutable_grant()->mutable_mpi()->set_ranks_per_node(2);
  env = AsMap(TaskEnvironment(mpi, node, false));
  CHECK(env["PARSL_NUM_RANKS"] == "2");
  CHECK(env["DRAGON_MPI_TASK"] == "r1/9");
  CHECK(env["CUDA_VISIBLE_DEVICES"].empty());  // granted none on a GPU node
  mpi.mutable_grant()->set_hold_only(true);
  CHECK(AsMap(TaskEnvironment(mpi, node, false)).count("PARSL_NUM_RANKS") == 0);

  NodeEnv no_gpus;
  CHECK(WorkerBaseEnvironment(no_gpus).empty());
  CHECK(WorkerBaseEnvironment(node).size() == 2);
}

TEST_CASE("workers learn their node's pool and data socket, when there are some") {
  NodeEnv node;
  std::map<std::string, std::string> env = AsMap(WorkerBaseEnvironment(node));
  CHECK(env.count("DRAGON_SHM_POOL") == 0);  // no pool
  CHECK(env.count("DRAGON_AGENT_DATA_SOCKET") == 0);

  node.shm_pool_path = "/dev/shm/dragon-pool-1-n7-2";
  env = AsMap(WorkerBaseEnvironment(node));
  CHECK(env["DRAGON_SHM_POOL"] == "/dev/shm/dragon-pool-1-n7-2");
  CHECK(env.count("DRAGON_AGENT_DATA_SOCKET") == 0);  // --noucx or no UCX

  node.data_socket = "/dev/shm/dragon-pool-1-n7-2.sock";
  node.has_gpus = true;
  env = AsMap(WorkerBaseEnvironment(node));
  CHECK(env["DRAGON_AGENT_DATA_SOCKET"] == "/dev/shm/dragon-pool-1-n7-2.sock");
  CHECK(env.size() == 4);  // and the GPU hiding
}

}  // namespace
}  // namespace dragon::agent
