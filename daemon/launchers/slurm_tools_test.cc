#include "daemon/launchers/slurm_tools.h"

#include <catch2/catch.hpp>

namespace dragon::daemon {
namespace {

absl::Duration Time(const std::string& text) {
  absl::StatusOr<absl::Duration> d = ParseSlurmTime(text, "--time");
  REQUIRE(d.ok());
  return *d;
}

std::string TimeError(const std::string& text) {
  absl::StatusOr<absl::Duration> d = ParseSlurmTime(text, "--time");
  REQUIRE_FALSE(d.ok());
  return std::string(d.status().message());
}

TEST_CASE("every walltime format of sbatch --time") {
  CHECK(Time("5") == absl::Minutes(5));
  CHECK(Time("5:30") == absl::Minutes(5) + absl::Seconds(30));
  CHECK(Time("01:00:00") == absl::Hours(1));
  CHECK(Time("36:00:00") == absl::Hours(36));
  CHECK(Time("2-0") == absl::Hours(48));
  CHECK(Time("1-2:30") == absl::Hours(26) + absl::Minutes(30));
  CHECK(Time("1-00:00:10") == absl::Hours(24) + absl::Seconds(10));
  CHECK(Time(" 10 ") == absl::Minutes(10));
}

TEST_CASE("a walltime that is not one names the flag and the formats") {
  for (const char* bad : {"", "abc", "5m", "1:2:3:4", "-5", "1-", "1-2:3:4:5", "0", "0:00:00",
                          "1.5", "+5"}) {
    INFO(bad);
    const std::string e = TimeError(bad);
    CHECK(e.find("--time '") == 0);
    CHECK(e.find("HOURS:MINUTES:SECONDS") != std::string::npos);
  }
}

TEST_CASE("walltimes for PBS") {
  CHECK(FormatWalltime(absl::Minutes(5)) == "00:05:00");
  CHECK(FormatWalltime(absl::Hours(26) + absl::Seconds(7)) == "26:00:07");
}

TEST_CASE("the smallest CPU count of a grant") {
  CHECK(MinCpusPerNode("2(x2)") == 2);
  CHECK(MinCpusPerNode("16") == 16);
  CHECK(MinCpusPerNode("4(x3),2,8(x2)") == 2);
  CHECK(MinCpusPerNode("") == 0);
  CHECK(MinCpusPerNode("x") == 0);
}

TEST_CASE("scontrol show hostnames") {
  auto hosts = ParseHostnames("n1\nn2\n\nn10\nn2\n");
  REQUIRE(hosts.ok());
  CHECK(*hosts == std::vector<std::string>{"n1", "n2", "n10"});
  CHECK_FALSE(ParseHostnames("").ok());
  auto bad = ParseHostnames("n1\nscontrol: error: bad thing\n");
  REQUIRE_FALSE(bad.ok());
  CHECK(std::string(bad.status().message()).find("scontrol: error") != std::string::npos);
}

TEST_CASE("squeue lines and job phases") {
  auto pending = ParseSqueueLine("PENDING|Resources|\n");
  REQUIRE(pending.ok());
  CHECK(pending->phase == JobPhase::kPending);
  CHECK(pending->reason == "Resources");
  auto running = ParseSqueueLine("RUNNING|None|n[1-2]");
  REQUIRE(running.ok());
  CHECK(running->phase == JobPhase::kRunning);
  CHECK(running->reason.empty());
  CHECK(running->nodelist == "n[1-2]");
  auto cancelled = ParseSqueueLine("CANCELLED|Resources|");
  REQUIRE(cancelled.ok());
  CHECK(cancelled->phase == JobPhase::kEnded);
  CHECK_FALSE(ParseSqueueLine("slurm_load_jobs error: Invalid job id specified").ok());
  CHECK(SlurmJobPhase("COMPLETING") == JobPhase::kEnded);
  CHECK(SlurmJobPhase("CANCELLED+") == JobPhase::kEnded);
  CHECK(SlurmJobPhase("TIMEOUT") == JobPhase::kEnded);
  CHECK(SlurmJobPhase("NODE_FAIL") == JobPhase::kEnded);
  CHECK(SlurmJobPhase("CONFIGURING") == JobPhase::kPending);
  CHECK(SlurmJobPhase("REQUEUED") == JobPhase::kPending);
  CHECK(IsHopelessPendingReason("PartitionConfig"));
  CHECK(IsHopelessPendingReason("PartitionTimeLimit"));
  CHECK(IsHopelessPendingReason("InvalidAccount"));
  CHECK_FALSE(IsHopelessPendingReason("Resources"));
  CHECK_FALSE(IsHopelessPendingReason("Priority"));
  CHECK_FALSE(IsHopelessPendingReason(""));
}

TEST_CASE("qstat -f of Slurm's wrapper and of PBS") {
  const std::string wrapper =
      "Job Id:\t5\n\tJob_Name = dragon-agents\n\tjob_state = R\n\tqueue = debug\n"
      "\texec_host = n1/1+n2/1\n\tResource_List.walltime = 00:02:00\n";
  auto r = ParseQstatFull(wrapper);
  REQUIRE(r.ok());
  CHECK(r->phase == JobPhase::kRunning);
  CHECK(r->nodelist == "n1,n2");
  const std::string pbspro =
      "Job Id: 12.server\n    job_state = Q\n    comment = Not Running: Insufficient amount of "
      "resource: ncpus\n";
  auto q = ParseQstatFull(pbspro);
  REQUIRE(q.ok());
  CHECK(q->phase == JobPhase::kPending);
  CHECK(q->reason == "Not Running: Insufficient amount of resource: ncpus");
  auto c = ParseQstatFull("Job Id: 3\n  job_state = C\n");
  REQUIRE(c.ok());
  CHECK(c->phase == JobPhase::kEnded);
  CHECK_FALSE(ParseQstatFull("qstat: Unknown Job Id 7.server").ok());
  CHECK(ExecHostNodes("n1/0*2+n2/0*2") == std::vector<std::string>{"n1", "n2"});
  CHECK(ExecHostNodes("n1/0+n1/1+n3/0") == std::vector<std::string>{"n1", "n3"});
  CHECK(ExecHostNodes("").empty());
}

TEST_CASE("pbsnodes -a names the nodes at the start of a line") {
  CHECK(ParsePbsnodes("n1\n    state = free\n    np = 2\n\nn2\n    state = free\n") ==
        std::vector<std::string>{"n1", "n2"});
}

TEST_CASE("programs missing from PATH") {
  CHECK(MissingPrograms({"sh", "no-such-program-xyz"}, "/usr/bin:/bin") ==
        std::vector<std::string>{"no-such-program-xyz"});
  CHECK(MissingPrograms({"sh"}, "/nonexistent") == std::vector<std::string>{"sh"});
  CHECK(MissingPrograms({"/bin/sh"}, "").empty());
}

}  // namespace
}  // namespace dragon::daemon
