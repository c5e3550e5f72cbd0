// The Slurm and PBS launchers without a cluster: srun's argv, the job
// scripts, pbsdsh/mpiexec commands, the factory's choices and errors, and
// BatchLauncher's waiting, failing, cancelling and watching against a
// scripted BatchSystem. (tests/test_slurm_launchers.py runs them on real Slurm.)
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "daemon/launchers/agent_command.h"
#include "daemon/launchers/batch_launcher.h"
#include "daemon/launchers/launcher_factory.h"
#include "daemon/launchers/pbs_batch.h"
#include "daemon/launchers/launcher_test_util.h"
#include "daemon/launchers/pbs_launcher.h"
#include "daemon/launchers/slurm_batch.h"
#include "daemon/launchers/slurm_launcher.h"

namespace dragon::daemon {
namespace {

constexpr char kToken[] = "0123456789abcdef0123456789abcdef";

AgentLaunchSpec Spec(const std::string& run_dir = "/runs/r 1") {
  AgentLaunchSpec spec;
  spec.agent_binary = "/opt/dragon/bin/dragon-agent";
  spec.head_address = "10.200.0.1:40123";
  spec.run_dir = run_dir;
  spec.workers_per_node = 0;
  spec.log_level = "info";
  spec.token = kToken;
  spec.python = "/usr/bin/python3";
  return spec;
}

EnvLookup Env(std::map<std::string, std::string> vars) {
  return [vars](const char* name) {
    auto it = vars.find(name);
    return it == vars.end() ? std::string() : it->second;
  };
}

bool Has(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

TEST_CASE("one srun step: one task per node, the grant's CPUs, no node id, no token") {
  SlurmLauncherOptions o;
  o.job_id = "42";
  o.nodes = {"n1", "n2", "n3"};
  o.cpus_per_task = 2;
  AgentCommand agent = BuildAgentCommand(Spec(), "");
  std::vector<std::string> argv = SlurmLauncher::SrunArgv(o, agent.argv);
  CHECK(argv[0] == "srun");
  for (const char* want : {"--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--cpus-per-task=2",
                           "--kill-on-bad-exit=0", "--overlap", "--export=ALL",
                           "--job-name=dragon-agents"}) {
    INFO(want);
    CHECK(Has(argv, want));
  }
  // The agent's command line follows srun's options, without --node-id.
  auto at = std::find(argv.begin(), argv.end(), "/opt/dragon/bin/dragon-agent");
  REQUIRE(at != argv.end());
  CHECK(*(at + 1) == "--head=10.200.0.1:40123");
  for (const std::string& a : argv) {
    CHECK_FALSE(absl::StartsWith(a, "--node-id"));
    CHECK_FALSE(absl::StrContains(a, kToken));
  }
  REQUIRE(agent.env.size() == 1);  // the token: in srun's environment
  CHECK(agent.env[0].second == kToken);
  o.cpus_per_task = 0;
  CHECK_FALSE(Has(SlurmLauncher::SrunArgv(o, agent.argv), "--cpus-per-task=0"));
}

TEST_CASE("the Slurm job script asks for whole nodes and runs one srun step") {
  SlurmBatchOptions o;
  o.nodes = 2;
  o.time = "5";
  o.partition = "debug";
  o.account = "proj1";
  o.sbatch_args = {"--qos=high"};
  SlurmBatch slurm(o);
  const std::string s = slurm.Script(Spec());
  INFO(s);
  CHECK(absl::StartsWith(s, "#!/bin/bash\n"));
  for (const char* line :
       {"#SBATCH --nodes=2\n", "#SBATCH --time=5\n", "#SBATCH --partition=debug\n",
        "#SBATCH --account=proj1\n", "#SBATCH --exclusive\n", "#SBATCH --ntasks-per-node=1\n",
        "#SBATCH --output=/runs/r 1/slurm-job.out\n", "#SBATCH --job-name=dragon-agents\n"}) {
    INFO(line);
    CHECK(absl::StrContains(s, line));
  }
  CHECK(absl::StrContains(s, "exec srun --nodes=\"$SLURM_JOB_NUM_NODES\""));
  CHECK(absl::StrContains(s, "--cpus-per-task=\"$cpus\" --kill-on-bad-exit=0 --overlap"));
  CHECK(absl::StrContains(s, "'/opt/dragon/bin/dragon-agent' '--head=10.200.0.1:40123'"));
  CHECK(absl::StrContains(s, "'--run-dir=/runs/r 1'"));
  CHECK(absl::StrContains(s, "sbatch --parsable --export=ALL --qos=high /runs/r 1/slurm-job.sh"));
  CHECK_FALSE(absl::StrContains(s, kToken));
  CHECK_FALSE(absl::StrContains(s, "--node-id"));
  CHECK(slurm.SbatchArgv("/j.sh") ==
        std::vector<std::string>{"sbatch", "--parsable", "--export=ALL", "--qos=high", "/j.sh"});
  o.partition.clear();
  o.account.clear();
  const std::string plain = SlurmBatch(o).Script(Spec());
  CHECK_FALSE(absl::StrContains(plain, "--partition"));
  CHECK_FALSE(absl::StrContains(plain, "--account"));
}

TEST_CASE("the PBS job script runs dragond agents, with nodes and walltime") {
  PbsBatchOptions o;
  o.nodes = 4;
  o.walltime = absl::Minutes(90);
  o.queue = "batch";
  o.account = "proj1";
  o.pbs_exec = "pbsdsh";
  o.dragond_binary = "/opt/dragon/bin/dragond";
  o.qsub_args = {"-l", "feature=x"};
  PbsBatch pbs(o);
  const std::string s = pbs.Script(Spec("/runs/r1"));
  INFO(s);
  CHECK(absl::StartsWith(s, "#!/bin/bash\n"));
  CHECK(absl::StrContains(s, "#PBS -l nodes=4,walltime=01:30:00\n"));
  CHECK(absl::StrContains(s, "#PBS -q batch\n"));
  CHECK(absl::StrContains(s, "#PBS -A proj1\n"));
  CHECK(absl::StrContains(s, "#PBS -N dragon-agents\n"));
  CHECK(absl::StrContains(s, "exec '/opt/dragon/bin/dragond' 'agents' '--head=10.200.0.1:40123' "
                             "'--run-dir=/runs/r1' '--pbs-exec=pbsdsh' "
                             "'--agent-binary=/opt/dragon/bin/dragon-agent'"));
  CHECK_FALSE(absl::StrContains(s, kToken));
  const std::vector<std::string> argv = pbs.QsubArgv("/runs/r1/pbs-job.sh", "/runs/r1");
  CHECK(argv == std::vector<std::string>{"qsub", "-V", "-N", "dragon-agents", "-j", "oe", "-o",
                                         "/runs/r1/pbs-job.out", "-q", "batch", "-A", "proj1",
                                         "-l", "feature=x", "/runs/r1/pbs-job.sh"});
}

TEST_CASE("pbsdsh: one per host with its node id; mpiexec: one for all; the token from its file") {
  PbsLauncherOptions o;
  o.job_id = "7.server";
  o.hosts = {"h1", "h2"};
  o.exec = "pbsdsh";
  std::vector<GroupCommand> c = PbsLauncher::Commands(o, Spec("/runs/r1"));
  REQUIRE(c.size() == 2);
  CHECK(c[1].label == "pbsdsh to h2");
  CHECK(std::vector<std::string>(c[1].child.argv.begin(), c[1].child.argv.begin() + 4) ==
        std::vector<std::string>{"pbsdsh", "-h", "h2", "/opt/dragon/bin/dragon-agent"});
  CHECK(Has(c[1].child.argv, "--node-id=h2"));
  CHECK(Has(c[1].child.argv, "--token-file=/runs/r1/token"));
  CHECK(c[1].child.env.empty());
  CHECK(c[1].child.log_path == "/runs/r1/pbsdsh-h2.log");
  CHECK(c[1].nodes == std::vector<std::string>{"h2"});
  o.exec = "mpiexec";
  c = PbsLauncher::Commands(o, Spec("/runs/r1"));
  REQUIRE(c.size() == 1);
  CHECK(std::vector<std::string>(c[0].child.argv.begin(), c[0].child.argv.begin() + 8) ==
        std::vector<std::string>{"mpiexec", "-n", "2", "--ppn", "1", "--hosts", "h1,h2",
                                 "/opt/dragon/bin/dragon-agent"});
  CHECK(c[0].nodes == o.hosts);
  for (const std::string& a : c[0].child.argv) {
    CHECK_FALSE(absl::StartsWith(a, "--node-id"));
    CHECK_FALSE(absl::StrContains(a, kToken));
  }
}

TEST_CASE("the factory: inside a job, from a login node, and what is missing") {
  const std::string dir = testutil::MakeTempDir("batch_launchers");
  // A fake Slurm: scontrol show hostnames prints the job's nodes.
  for (const char* tool : {"srun", "sbatch", "squeue", "scancel", "sinfo"}) {
    std::ofstream(dir + "/" + tool) << "#!/bin/sh\nexit 0\n";
    chmod((dir + "/" + tool).c_str(), 0755);
  }
  std::ofstream(dir + "/scontrol") << "#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && "
                                      "printf 'n1\\nn2\\n'\n";
  chmod((dir + "/scontrol").c_str(), 0755);
  const std::string path = dir + ":" + getenv("PATH");
  setenv("PATH", path.c_str(), 1);

  LauncherConfig auto_kind;
  auto inside = MakeLauncher(auto_kind, Env({{"SLURM_JOB_ID", "42"}, {"PATH", path},
                                             {"SLURM_JOB_NODELIST", "n[1-2]"},
                                             {"SLURM_JOB_CPUS_PER_NODE", "2(x2)"}}));
  REQUIRE(inside.ok());
  CHECK((*inside)->name() == "slurm");
  CHECK((*inside)->ExpectedNodes() == std::vector<std::string>{"n1", "n2"});

  LauncherConfig slurm;
  slurm.kind = "slurm";
  auto outside = MakeLauncher(slurm, Env({{"PATH", path}}));
  REQUIRE_FALSE(outside.ok());
  CHECK(absl::StrContains(outside.status().message(), "SLURM_JOB_ID is not set"));
  CHECK(absl::StrContains(outside.status().message(), "--nodes N --time T"));

  slurm.nodes = 2;
  auto no_time = MakeLauncher(slurm, Env({{"PATH", path}}));
  REQUIRE_FALSE(no_time.ok());
  CHECK(absl::StrContains(no_time.status().message(), "needs --time T"));

  slurm.time = "5";
  auto login = MakeLauncher(slurm, Env({{"PATH", path}}));
  REQUIRE(login.ok());
  CHECK((*login)->name() == "slurm");
  CHECK((*login)->ExpectedNodes().empty());  // known once the job runs

  auto no_slurm = MakeLauncher(slurm, Env({{"PATH", "/nonexistent"}}));
  REQUIRE_FALSE(no_slurm.ok());
  CHECK(absl::StrContains(no_slurm.status().message(), "sbatch"));
  CHECK(absl::StrContains(no_slurm.status().message(), "not in PATH (/nonexistent)"));

  slurm.time.clear();
  slurm.nodes = 0;
  slurm.time = "5";
  auto no_nodes = MakeLauncher(slurm, Env({{"PATH", path}}));
  REQUIRE_FALSE(no_nodes.ok());
  CHECK(absl::StrContains(no_nodes.status().message(), "needs --nodes N"));

  LauncherConfig wrong = slurm;
  wrong.nodes = 2;
  wrong.queue = "batch";
  auto queue = MakeLauncher(wrong, Env({{"PATH", path}}));
  REQUIRE_FALSE(queue.ok());
  CHECK(absl::StrContains(queue.status().message(), "--queue is an option of --launcher pbs"));

  LauncherConfig local;
  local.kind = "local";
  local.nodes = 2;
  auto nodes_local = MakeLauncher(local, Env({}));
  REQUIRE_FALSE(nodes_local.ok());
  CHECK(absl::StrContains(nodes_local.status().message(), "not of 'local'"));

  // PBS inside a job: the unique hosts of PBS_NODEFILE.
  std::ofstream(dir + "/nodefile") << "h1\nh1\nh2\nh3\nh3\n";
  LauncherConfig pbs;
  auto in_pbs = MakeLauncher(pbs, Env({{"PBS_JOBID", "7.server"}, {"PATH", path},
                                       {"PBS_NODEFILE", dir + "/nodefile"}}));
  REQUIRE(in_pbs.ok());
  CHECK((*in_pbs)->name() == "pbs");
  CHECK((*in_pbs)->ExpectedNodes() == std::vector<std::string>{"h1", "h2", "h3"});
  pbs.kind = "pbs";
  pbs.pbs_exec = "pbsdsh";
  auto no_pbsdsh = MakeLauncher(pbs, Env({{"PBS_JOBID", "7.server"}, {"PATH", path},
                                          {"PBS_NODEFILE", dir + "/nodefile"}}));
  REQUIRE_FALSE(no_pbsdsh.ok());
  CHECK(absl::StrContains(no_pbsdsh.status().message(), "--pbs-exec pbsdsh needs pbsdsh"));
  pbs.pbs_exec = "ssh";
  pbs.nodes = 2;
  pbs.time = "10";
  auto no_qsub = MakeLauncher(pbs, Env({{"PATH", dir}}));  // the fake Slurm only
  REQUIRE_FALSE(no_qsub.ok());
  CHECK(absl::StrContains(no_qsub.status().message(), "qsub"));
}

// A batch system that plays back a list of states.
class ScriptedSystem : public BatchSystem {
 public:
  std::string name() const override { return "Slurm"; }
  std::string launcher() const override { return "slurm"; }
  std::string script_name() const override { return "job.sh"; }
  std::string output_name() const override { return "job.out"; }
  std::string Request() const override { return "2 node(s) for 5"; }
  std::string Script(const AgentLaunchSpec&) const override { return "#!/bin/bash\ntrue\n"; }
  absl::StatusOr<std::string> Submit(
      const std::string&, const std::vector<std::pair<std::string, std::string>>& env) override {
    std::lock_guard<std::mutex> l(mu);
    submit_env = env;
    if (!refuse.empty()) return absl::InvalidArgumentError(refuse);
    return std::string("17");
  }
  absl::StatusOr<JobStatus> Query(const std::string&) override {
    std::lock_guard<std::mutex> l(mu);
    ++queries;
    if (cancelled) return Status("CANCELLED", "", JobPhase::kEnded);
    if (states.size() > 1) {
      auto s = states.front();
      states.pop_front();
      return s;
    }
    if (states.empty()) return absl::NotFoundError("gone");
    return states.front();
  }
  absl::Status Cancel(const std::string&) override {
    std::lock_guard<std::mutex> l(mu);
    cancelled = true;
    ++cancels;
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<std::string>> Nodes(const JobStatus&) override {
    return std::vector<std::string>{"n1", "n2"};
  }
  std::vector<std::string> PartitionHosts() override { return {"n1"}; }
  bool Settled(const JobStatus& s) const override {
    return s.phase == JobPhase::kEnded && s.state != "COMPLETING";
  }
  static absl::StatusOr<JobStatus> Status(const std::string& state, const std::string& reason,
                                          JobPhase phase) {
    JobStatus s;
    s.state = state;
    s.reason = reason;
    s.phase = phase;
    s.nodelist = "n[1-2]";
    return s;
  }
  void Set(std::deque<absl::StatusOr<JobStatus>> s) {
    std::lock_guard<std::mutex> l(mu);
    states = std::move(s);
  }
  std::mutex mu;
  std::deque<absl::StatusOr<JobStatus>> states;
  std::vector<std::pair<std::string, std::string>> submit_env;
  std::string refuse;
  bool cancelled = false;
  int cancels = 0;
  int queries = 0;
};

using S = ScriptedSystem;

BatchLauncherOptions Fast() {
  BatchLauncherOptions o;
  o.start_timeout = absl::Seconds(5);
  o.poll = absl::Milliseconds(10);
  o.watch = absl::Milliseconds(20);
  return o;
}

TEST_CASE("a job that runs: progress while pending, then its nodes; the token in the environment") {
  const std::string dir = testutil::MakeTempDir("batch_launchers");
  auto system = std::make_unique<S>();
  S* s = system.get();
  s->Set({S::Status("PENDING", "Priority", JobPhase::kPending),
          S::Status("PENDING", "Resources", JobPhase::kPending),
          S::Status("RUNNING", "None", JobPhase::kRunning)});
  BatchLauncher launcher(std::move(system), Fast());
  testutil::RecordingObserver rec;
  REQUIRE(launcher.Launch(Spec(dir), &rec).ok());
  CHECK(launcher.ExpectedNodes() == std::vector<std::string>{"n1", "n2"});
  CHECK(launcher.job_id() == "17");
  const std::string all = rec.All();
  INFO(all);
  CHECK(absl::StrContains(all, "submitted Slurm job 17 (2 node(s) for 5; script " + dir +
                                   "/job.sh"));
  CHECK(absl::StrContains(all, "Slurm job 17: PENDING (Priority)"));
  CHECK(absl::StrContains(all, "Slurm job 17: PENDING (Resources)"));
  CHECK(absl::StrContains(all, "Slurm job 17 is RUNNING on n1, n2"));
  REQUIRE(s->submit_env.size() == 1);
  CHECK(s->submit_env[0] == std::make_pair(std::string("DRAGON_TOKEN"), std::string(kToken)));
  struct stat st {};
  REQUIRE(stat((dir + "/job.sh").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  // Stop: the job ends by itself once its agents leave; no cancel needed.
  s->Set({S::Status("COMPLETED", "", JobPhase::kEnded)});
  launcher.Stop(absl::Seconds(2));
  CHECK(s->cancels == 0);
}

TEST_CASE("a job that cannot start, ends before running, or takes too long is cancelled") {
  const std::string dir = testutil::MakeTempDir("batch_launchers");
  SECTION("hopeless reason") {
    auto system = std::make_unique<S>();
    S* s = system.get();
    s->Set({S::Status("PENDING", "PartitionConfig", JobPhase::kPending)});
    BatchLauncher launcher(std::move(system), Fast());
    absl::Status st = launcher.Launch(Spec(dir), nullptr);
    REQUIRE_FALSE(st.ok());
    CHECK(absl::StrContains(st.message(), "Slurm job 17 cannot start: PENDING (PartitionConfig)"));
    CHECK(absl::StrContains(st.message(), "cancelled it"));
    CHECK(s->cancels == 1);
    launcher.Stop(absl::Seconds(1));
    CHECK(s->cancels == 1);
  }
  SECTION("ended before it ran, with its output") {
    std::ofstream(dir + "/job.out") << "srun: error: cannot run dragon-agent\n";
    auto system = std::make_unique<S>();
    system->Set({S::Status("FAILED", "NonZeroExitCode", JobPhase::kEnded)});
    BatchLauncher launcher(std::move(system), Fast());
    absl::Status st = launcher.Launch(Spec(dir), nullptr);
    REQUIRE_FALSE(st.ok());
    CHECK(absl::StrContains(st.message(), "ended before it ran: FAILED (NonZeroExitCode)"));
    CHECK(absl::StrContains(st.message(), "cannot run dragon-agent"));
  }
  SECTION("start timeout") {
    auto system = std::make_unique<S>();
    S* s = system.get();
    s->Set({S::Status("PENDING", "Resources", JobPhase::kPending)});
    BatchLauncherOptions o = Fast();
    o.start_timeout = absl::Milliseconds(300);
    BatchLauncher launcher(std::move(system), o);
    absl::Status st = launcher.Launch(Spec(dir), nullptr);
    REQUIRE_FALSE(st.ok());
    CHECK(absl::IsDeadlineExceeded(st));
    CHECK(absl::StrContains(st.message(), "did not start within 300ms (--start-timeout): still "
                                          "PENDING (Resources); cancelled it"));
    CHECK(s->cancels == 1);
  }
  SECTION("told to stop while pending") {
    auto system = std::make_unique<S>();
    S* s = system.get();
    s->Set({S::Status("PENDING", "Resources", JobPhase::kPending)});
    BatchLauncher launcher(std::move(system), Fast());
    AgentLaunchSpec spec = Spec(dir);
    const absl::Time t0 = absl::Now();
    spec.stop_requested = [t0] {
      return absl::Now() - t0 > absl::Milliseconds(100) ? "received Interrupt" : "";
    };
    absl::Status st = launcher.Launch(spec, nullptr);
    REQUIRE_FALSE(st.ok());
    CHECK(absl::IsCancelled(st));
    CHECK(absl::StrContains(st.message(), "received Interrupt"));
    CHECK(s->cancels == 1);
  }
  SECTION("refused") {
    auto system = std::make_unique<S>();
    system->refuse = "sbatch refused the job (exit 1): sbatch: error: invalid partition";
    BatchLauncher launcher(std::move(system), Fast());
    absl::Status st = launcher.Launch(Spec(dir), nullptr);
    REQUIRE_FALSE(st.ok());
    CHECK(absl::StrContains(st.message(), "invalid partition"));
  }
}

TEST_CASE("a job that ends while the head runs is reported; Stop cancels one that stays") {
  const std::string dir = testutil::MakeTempDir("batch_launchers");
  // The job ends behind the service's back with these squeue answers; the
  // launcher must report it by its final state, whatever came before.
  auto ended_outside = [&](std::deque<absl::StatusOr<JobStatus>> ends) {
    auto system = std::make_unique<S>();
    S* s = system.get();
    s->Set({S::Status("RUNNING", "None", JobPhase::kRunning)});
    BatchLauncher launcher(std::move(system), Fast());
    testutil::RecordingObserver rec;
    REQUIRE(launcher.Launch(Spec(dir), &rec).ok());
    s->Set(std::move(ends));
    for (int i = 0; i < 300; ++i) {
      {
        std::lock_guard<std::mutex> l(rec.mu);
        if (!rec.problem.empty()) break;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    std::lock_guard<std::mutex> l(rec.mu);
    CHECK(absl::StrContains(rec.problem, "Slurm job 17 ended outside the service: CANCELLED"));
    CHECK(rec.failed.size() == 2);
  };
  SECTION("ended outside the service") {
    ended_outside({S::Status("CANCELLED", "", JobPhase::kEnded)});
  }
  SECTION("a cancelled job is reported by its final state, not COMPLETING") {
    ended_outside({S::Status("COMPLETING", "", JobPhase::kEnded),
                   S::Status("COMPLETING", "", JobPhase::kEnded),
                   S::Status("CANCELLED", "", JobPhase::kEnded)});
  }
  SECTION("still running after the grace") {
    auto system = std::make_unique<S>();
    S* s = system.get();
    s->Set({S::Status("RUNNING", "None", JobPhase::kRunning)});
    BatchLauncher launcher(std::move(system), Fast());
    testutil::RecordingObserver rec;
    REQUIRE(launcher.Launch(Spec(dir), &rec).ok());
    launcher.Stop(absl::Milliseconds(200));
    CHECK(s->cancels == 1);
    std::lock_guard<std::mutex> l(rec.mu);
    CHECK(rec.problem.empty());  // our own cancel is no problem to report
  }
}

}  // namespace
}  // namespace dragon::daemon
