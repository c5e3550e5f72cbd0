#include "daemon/launchers/launcher_factory.h"

#include <catch2/catch.hpp>
#include <map>

namespace dragon::daemon {
namespace {

EnvLookup Env(std::map<std::string, std::string> vars) {
  return [vars](const char* name) {
    auto it = vars.find(name);
    return it == vars.end() ? std::string() : it->second;
  };
}

TEST_CASE("auto picks slurm inside a Slurm job, pbs inside a PBS job, else local") {
  CHECK(ResolveLauncherKind("auto", Env({})) == "local");
  CHECK(ResolveLauncherKind("auto", Env({{"SLURM_JOB_ID", "42"}})) == "slurm");
  CHECK(ResolveLauncherKind("auto", Env({{"PBS_JOBID", "7.server"}, {"PBS_NODEFILE", "/f"}})) ==
        "pbs");
  // PBS_JOBID alone (Slurm's spank_pbs sets it in every job) is not PBS.
  CHECK(ResolveLauncherKind("auto", Env({{"PBS_JOBID", "7"}})) == "local");
  CHECK(ResolveLauncherKind("ssh", Env({{"SLURM_JOB_ID", "42"}})) == "ssh");
}

TEST_CASE("each launcher is built with its options; mistakes name the option") {
  LauncherConfig local;
  local.kind = "local";
  local.local_node_id = "me";
  auto l = MakeLauncher(local, Env({}));
  REQUIRE(l.ok());
  CHECK((*l)->name() == "local");
  CHECK((*l)->ExpectedNodes() == std::vector<std::string>{"me"});

  LauncherConfig none;
  none.kind = "none";
  auto n = MakeLauncher(none, Env({}));
  REQUIRE(n.ok());
  CHECK(*n == nullptr);

  LauncherConfig ssh;
  ssh.kind = "ssh";
  ssh.hosts = "h1,h2";
  auto s = MakeLauncher(ssh, Env({}));
  REQUIRE(s.ok());
  CHECK((*s)->ExpectedNodes() == std::vector<std::string>{"h1", "h2"});

  ssh.hosts.clear();
  auto no_hosts = MakeLauncher(ssh, Env({}));
  REQUIRE_FALSE(no_hosts.ok());
  CHECK(std::string(no_hosts.status().message()).find("--hosts") != std::string::npos);

  LauncherConfig hosts_without_ssh;
  hosts_without_ssh.kind = "local";
  hosts_without_ssh.hosts = "h1";
  CHECK_FALSE(MakeLauncher(hosts_without_ssh, Env({})).ok());

  LauncherConfig unknown;
  unknown.kind = "kubernetes";
  auto u = MakeLauncher(unknown, Env({}));
  REQUIRE_FALSE(u.ok());
  CHECK(std::string(u.status().message()).find("'kubernetes'") != std::string::npos);
  CHECK(std::string(u.status().message()).find(kLauncherKinds) != std::string::npos);
}

}  // namespace
}  // namespace dragon::daemon
