// The command lines of MPI jobs for each kind of launcher, and rank placement.
#include "agent/mpi_command_line.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"

namespace dragon::agent {
namespace {

TEST_CASE("command lines, prefixes and rank placement") {
  auto words = SplitCommandLine(R"(a 'b c' d\ e "f \"g\"")");
  REQUIRE(words.ok());
  CHECK(*words == std::vector<std::string>{"a", "b c", "d e", "f \"g\""});

  v1::MpiPlacement p;
  p.add_hosts("h1");
  p.add_hosts("h2");
  p.set_ranks(4);
  p.set_ranks_per_node(2);
  p.set_launcher_options("-genv FOO 'a b'");
  CHECK(RankHosts(p) == std::vector<std::string>{"h1", "h1", "h2", "h2"});
  p.set_ranks_per_node(0);
  p.set_ranks(3);
  CHECK(RanksPerNode(p) == 2);
  CHECK(RankHosts(p) == std::vector<std::string>{"h1", "h1", "h2"});
  p.set_ranks(4);
  p.set_ranks_per_node(2);

  MpiLauncherConfig hydra;
  hydra.mpiexec = "mpiexec.hydra";
  hydra.launcher_exec = "/tmp/tb/ssh";
  hydra.rank_wrapper = "/bin/dragon-mpi-rank";
  auto prefix = MpiLaunchPrefix(hydra, p);
  REQUIRE(prefix.ok());
  CHECK(absl::StrJoin(*prefix, " ") ==
        "mpiexec.hydra -n 4 -ppn 2 -hosts h1,h2 -launcher-exec /tmp/tb/ssh");
  auto argv = MpiJobArgv(hydra, p, "/run/tasks/7", "T", {"./fact", "7"});
  REQUIRE(argv.ok());
  CHECK(absl::StrJoin(*argv, " ") ==
        "mpiexec.hydra -n 4 -ppn 2 -hosts h1,h2 -launcher-exec /tmp/tb/ssh -outfile-pattern "
        "/run/tasks/7/rank-%r.out -errfile-pattern /run/tasks/7/rank-%r.err -genv FOO a b "
        "/bin/dragon-mpi-rank --tag=T -- ./fact 7");

  MpiLauncherConfig srun;
  srun.kind = MpiLauncherKind::kSrun;
  argv = MpiJobArgv(srun, p, "/d", "T", {"x"});
  REQUIRE(argv.ok());
  CHECK(absl::StrJoin(*argv, " ") ==
        "srun --ntasks=4 --ntasks-per-node=2 --distribution=block --kill-on-bad-exit=1 --nodes=2 "
        "--nodelist=h1,h2 --output=/d/rank-%t.out --error=/d/rank-%t.err --input=0 -genv FOO a b x");

  MpiLauncherConfig cmd;
  cmd.kind = MpiLauncherKind::kCommand;
  cmd.command = {"mpirun", "-np", "{ranks}", "-N", "{ranks_per_node}", "--host", "{hosts}",
                 "--hostfile", "{hostfile}", "--nodes={nodes}"};
  p.clear_launcher_options();
  argv = MpiJobArgv(cmd, p, "/d", "T", {"x"});
  REQUIRE(argv.ok());
  CHECK(absl::StrJoin(*argv, " ") ==
        "mpirun -np 4 -N 2 --host h1,h2 --hostfile /d/hostfile --nodes=2 x");
  CHECK(!MpiLaunchPrefix(cmd, p).ok());  // {hostfile} without a job dir

  p.set_ranks(0);
  CHECK(!MpiLaunchPrefix(hydra, p).ok());
}

}  // namespace
}  // namespace dragon::agent
