// MpiLauncherConfigFromEnv with a made-up environment and PATH.
#include "agent/mpi_launcher_config.h"

#include <catch2/catch.hpp>
#include <map>
#include <string>

#include "absl/strings/match.h"

namespace dragon::agent {
namespace {

TEST_CASE("launcher configuration from the environment") {
  std::map<std::string, std::string> env;
  auto get = [&env](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  auto in_path = [](const std::string& p) { return p == "srun" || p == "mpiexec.hydra"; };
  auto c = MpiLauncherConfigFromEnv(get, "/opt/dragon/bin", in_path);
  REQUIRE(c.ok());
  CHECK(c->kind == MpiLauncherKind::kHydra);
  CHECK(c->mpiexec == "mpiexec.hydra");
  CHECK(c->rank_wrapper == "/opt/dragon/bin/dragon-mpi-rank");
  env["SLURM_JOB_ID"] = "42";
  c = MpiLauncherConfigFromEnv(get, "/x", in_path);
  CHECK(c->kind == MpiLauncherKind::kSrun);
  env["DRAGON_MPI_LAUNCHER"] = "hydra";
  env["HYDRA_LAUNCHER_EXEC"] = "/tmp/tb/ssh";
  env["DRAGON_MPI_RANK_WRAPPER"] = "none";
  c = MpiLauncherConfigFromEnv(get, "/x", in_path);
  CHECK(c->kind == MpiLauncherKind::kHydra);
  CHECK(c->launcher_exec == "/tmp/tb/ssh");
  CHECK(c->rank_wrapper.empty());
  env["DRAGON_MPI_LAUNCHER"] = "mpirun -np {ranks} --host '{hosts}'";
  c = MpiLauncherConfigFromEnv(get, "/x", in_path);
  REQUIRE(c.ok());
  CHECK(c->kind == MpiLauncherKind::kCommand);
  CHECK(c->command == std::vector<std::string>{"mpirun", "-np", "{ranks}", "--host", "{hosts}"});
  env["DRAGON_MPI_LAUNCHER"] = "bogus";
  c = MpiLauncherConfigFromEnv(get, "/x", in_path);
  REQUIRE(!c.ok());
  CHECK(absl::StrContains(c.status().message(), "DRAGON_MPI_LAUNCHER"));
  env["DRAGON_MPI_LAUNCHER"] = "mpirun 'unclosed";
  CHECK(!MpiLauncherConfigFromEnv(get, "/x", in_path).ok());
}

}  // namespace
}  // namespace dragon::agent
