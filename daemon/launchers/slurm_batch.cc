#include "daemon/launchers/slurm_batch.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "daemon/launchers/agent_command.h"
#include "daemon/launchers/child_process.h"
#include "daemon/launchers/slurm_launcher.h"

namespace dragon::daemon {
namespace {

constexpr absl::Duration kCommandTimeout = absl::Seconds(30);

std::string Trimmed(const std::string& text) {
  return std::string(absl::StripAsciiWhitespace(text));
}

}  // namespace

std::string SlurmBatch::Request() const {
  return absl::StrCat(options_.nodes, " node(s) for ", options_.time,
                      options_.partition.empty() ? ""
                                                 : absl::StrCat(", partition ", options_.partition),
                      options_.account.empty() ? "" : absl::StrCat(", account ", options_.account));
}

std::string SlurmBatch::Script(const AgentLaunchSpec& spec) const {
  const AgentCommand agent = BuildAgentCommand(spec, "");
  std::string s = "#!/bin/bash\n";
  absl::StrAppend(&s, "# The agents of a dragond head (", spec.head_address,
                  "), one per node of this job, started by one srun step.\n");
  absl::StrAppend(&s, "# Written and submitted by `dragond start --launcher slurm`:\n#   ",
                  absl::StrJoin(SbatchArgv(absl::StrCat(spec.run_dir, "/", script_name())), " "),
                  "\n");
  absl::StrAppend(&s,
                  "# The run's token reaches the agents through the job's environment, not this "
                  "file.\n");
  absl::StrAppend(&s, "#SBATCH --job-name=dragon-agents\n");
  absl::StrAppend(&s, "#SBATCH --nodes=", options_.nodes, "\n");
  absl::StrAppend(&s, "#SBATCH --ntasks-per-node=1\n");
  absl::StrAppend(&s, "#SBATCH --exclusive\n");
  absl::StrAppend(&s, "#SBATCH --time=", options_.time, "\n");
  if (!options_.partition.empty()) {
    absl::StrAppend(&s, "#SBATCH --partition=", options_.partition, "\n");
  }
  if (!options_.account.empty()) absl::StrAppend(&s, "#SBATCH --account=", options_.account, "\n");
  absl::StrAppend(&s, "#SBATCH --output=", spec.run_dir, "/", output_name(), "\n");
  absl::StrAppend(&s, "#SBATCH --chdir=", spec.run_dir, "\n");
  absl::StrAppend(&s, "\n# Each agent is bound to the CPUs the job holds on its node (the smallest "
                      "count, if they differ).\n");
  absl::StrAppend(&s, "cpus=$(echo \"${SLURM_JOB_CPUS_PER_NODE:-1}\" | tr ',' '\\n' | "
                      "sed 's/(.*//' | sort -n | head -n 1)\n");
  absl::StrAppend(&s, "echo \"dragon agents: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, $cpus "
                      "CPU(s) per agent\"\n");
  absl::StrAppend(&s,
                  "exec srun --nodes=\"$SLURM_JOB_NUM_NODES\" --ntasks=\"$SLURM_JOB_NUM_NODES\" "
                  "--ntasks-per-node=1 --cpus-per-task=\"$cpus\"");
  for (const std::string& option : SrunStepOptions()) absl::StrAppend(&s, " ", option);
  absl::StrAppend(&s, " \\\n ");
  for (const std::string& arg : agent.argv) absl::StrAppend(&s, " ", ShellQuote(arg));
  absl::StrAppend(&s, "\n");
  return s;
}

std::vector<std::string> SlurmBatch::SbatchArgv(const std::string& script) const {
  std::vector<std::string> argv = {"sbatch", "--parsable", "--export=ALL"};
  argv.insert(argv.end(), options_.sbatch_args.begin(), options_.sbatch_args.end());
  argv.push_back(script);
  return argv;
}

absl::StatusOr<std::string> SlurmBatch::Submit(
    const std::string& script, const std::vector<std::pair<std::string, std::string>>& env) {
  const std::vector<std::string> argv = SbatchArgv(script);
  absl::StatusOr<CommandResult> r = RunCommand(argv, env, absl::Seconds(60));
  if (!r.ok()) return r.status();
  if (r->timed_out) {
    return absl::DeadlineExceededError("sbatch did not answer within 60s (is slurmctld up?)");
  }
  std::string err = Trimmed(r->err);
  if (r->exit_code != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sbatch refused the job (exit ", r->exit_code, "): ", err.empty() ? Trimmed(r->out) : err,
        " (", absl::StrJoin(argv, " "), ")"));
  }
  // --parsable: "ID" or "ID;CLUSTER".
  std::string id = Trimmed(r->out);
  id = id.substr(0, id.find(';'));
  if (id.find('\n') != std::string::npos) id = id.substr(id.rfind('\n') + 1);
  int64_t number = 0;
  if (!absl::SimpleAtoi(id, &number) || number <= 0) {
    return absl::InternalError(absl::StrCat("sbatch printed no job id: '", Trimmed(r->out), "' ",
                                            err));
  }
  return id;
}

absl::StatusOr<JobStatus> SlurmBatch::Query(const std::string& job_id) {
  absl::StatusOr<CommandResult> r = RunCommand(
      {"squeue", "-h", "-j", job_id, "--states=all", "-o", "%T|%r|%N"}, {}, kCommandTimeout);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    if (absl::StrContains(r->err, "Invalid job id")) {
      return absl::NotFoundError(absl::StrCat("Slurm knows no job ", job_id));
    }
    return absl::UnavailableError(
        absl::StrCat("squeue exited ", r->exit_code, ": ", Trimmed(r->err)));
  }
  const std::string out = Trimmed(r->out);
  if (out.empty()) return absl::NotFoundError(absl::StrCat("Slurm knows no job ", job_id));
  return ParseSqueueLine(out.substr(0, out.find('\n')));
}

absl::Status SlurmBatch::Cancel(const std::string& job_id) {
  absl::StatusOr<CommandResult> r = RunCommand({"scancel", job_id}, {}, kCommandTimeout);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::UnavailableError(absl::StrCat("scancel ", job_id, " exited ", r->exit_code, ": ",
                                               Trimmed(r->err)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> SlurmBatch::Nodes(const JobStatus& running) {
  absl::StatusOr<CommandResult> r =
      RunCommand({"scontrol", "show", "hostnames", running.nodelist}, {}, kCommandTimeout);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::UnavailableError(absl::StrCat("scontrol show hostnames ", running.nodelist,
                                               " exited ", r->exit_code, ": ", Trimmed(r->err)));
  }
  return ParseHostnames(r->out);
}

std::vector<std::string> SlurmBatch::PartitionHosts() {
  // The partition's nodes; every node if it has none (a wrong name: sbatch will say so).
  for (bool whole_cluster : {false, true}) {
    std::vector<std::string> argv = {"sinfo", "-h", "-N", "-o", "%N"};
    if (!whole_cluster && !options_.partition.empty()) {
      argv.insert(argv.end(), {"-p", options_.partition});
    }
    absl::StatusOr<CommandResult> r = RunCommand(argv, {}, absl::Seconds(10));
    if (!r.ok() || r->exit_code != 0) continue;
    absl::StatusOr<std::vector<std::string>> hosts = ParseHostnames(r->out);
    if (!hosts.ok()) continue;
    if (hosts->size() > 8) hosts->resize(8);
    return *hosts;
  }
  return {};
}

std::string SlurmBatch::Explain(const JobStatus& status) {
  (void)status;
  absl::StatusOr<CommandResult> r =
      RunCommand({"sinfo", "-h", "-o", "%P|%D|%l"}, {}, absl::Seconds(10));
  if (!r.ok() || r->exit_code != 0) return "";
  for (absl::string_view line : absl::StrSplit(r->out, '\n', absl::SkipWhitespace())) {
    std::vector<std::string> f = absl::StrSplit(line, '|');
    if (f.size() != 3) continue;
    const bool is_default = absl::EndsWith(f[0], "*");
    const std::string name(absl::StripSuffix(f[0], "*"));
    if (options_.partition.empty() ? !is_default : name != options_.partition) continue;
    return absl::StrCat("partition ", name, " has ", f[1], " node(s) and a time limit of ", f[2],
                        "; asked for ", options_.nodes, " node(s) for ", options_.time);
  }
  return "";
}

bool SlurmBatch::Settled(const JobStatus& status) const {
  return status.phase == JobPhase::kEnded && !absl::StartsWith(status.state, "COMPLETING");
}

}  // namespace dragon::daemon
