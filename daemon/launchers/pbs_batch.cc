#include "daemon/launchers/pbs_batch.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/launchers/child_process.h"

namespace dragon::daemon {
namespace {

constexpr absl::Duration kCommandTimeout = absl::Seconds(30);

std::string Trimmed(const std::string& text) {
  return std::string(absl::StripAsciiWhitespace(text));
}

}  // namespace

std::string PbsBatch::Request() const {
  return absl::StrCat(options_.nodes, " node(s) for ", FormatWalltime(options_.walltime),
                      options_.queue.empty() ? "" : absl::StrCat(", queue ", options_.queue),
                      options_.account.empty() ? "" : absl::StrCat(", account ", options_.account),
                      "; agents started with --pbs-exec ", options_.pbs_exec);
}

std::vector<std::string> PbsBatch::QsubArgv(const std::string& script,
                                            const std::string& run_dir) const {
  std::vector<std::string> argv = {"qsub", "-V", "-N", "dragon-agents", "-j", "oe", "-o",
                                   absl::StrCat(run_dir, "/", output_name())};
  if (!options_.queue.empty()) argv.insert(argv.end(), {"-q", options_.queue});
  if (!options_.account.empty()) argv.insert(argv.end(), {"-A", options_.account});
  argv.insert(argv.end(), options_.qsub_args.begin(), options_.qsub_args.end());
  argv.push_back(script);
  return argv;
}

std::string PbsBatch::Script(const AgentLaunchSpec& spec) const {
  std::string s = "#!/bin/bash\n";
  absl::StrAppend(&s, "#PBS -N dragon-agents\n");
  absl::StrAppend(&s, "#PBS -l nodes=", options_.nodes, ",walltime=",
                  FormatWalltime(options_.walltime), "\n");
  if (!options_.queue.empty()) absl::StrAppend(&s, "#PBS -q ", options_.queue, "\n");
  if (!options_.account.empty()) absl::StrAppend(&s, "#PBS -A ", options_.account, "\n");
  absl::StrAppend(&s, "#PBS -j oe\n");
  absl::StrAppend(&s, "#PBS -o ", spec.run_dir, "/", output_name(), "\n");
  absl::StrAppend(&s, "#PBS -V\n");
  absl::StrAppend(&s, "# The agents of a dragond head (", spec.head_address,
                  "), one per node of this job.\n");
  absl::StrAppend(&s, "# Written and submitted by `dragond start --launcher pbs`:\n#   ",
                  absl::StrJoin(QsubArgv(absl::StrCat(spec.run_dir, "/", script_name()),
                                         spec.run_dir),
                                " "),
                  "\n");
  absl::StrAppend(&s,
                  "# `dragond agents` starts them on every node of the job: in a PBS job on the "
                  "hosts of\n# $PBS_NODEFILE with --pbs-exec, under Slurm's qsub wrapper with one "
                  "srun step. The run's\n# token comes in the job's environment (qsub -V), not "
                  "this file.\n");
  std::vector<std::string> argv = {options_.dragond_binary,
                                   "agents",
                                   absl::StrCat("--head=", spec.head_address),
                                   absl::StrCat("--run-dir=", spec.run_dir),
                                   absl::StrCat("--pbs-exec=", options_.pbs_exec),
                                   absl::StrCat("--agent-binary=", spec.agent_binary),
                                   absl::StrCat("--workers=", spec.workers_per_node),
                                   absl::StrCat("--log-level=", spec.log_level)};
  if (spec.shm_pool_mb >= 0) argv.push_back(absl::StrCat("--shm-pool-mb=", spec.shm_pool_mb));
  if (!spec.python.empty()) argv.push_back(absl::StrCat("--python=", spec.python));
  if (!spec.tls_ca.empty()) argv.push_back(absl::StrCat("--tls-ca=", spec.tls_ca));
  absl::StrAppend(&s, "exec");
  for (const std::string& arg : argv) absl::StrAppend(&s, " ", ShellQuote(arg));
  absl::StrAppend(&s, "\n");
  return s;
}

absl::StatusOr<std::string> PbsBatch::Submit(
    const std::string& script, const std::vector<std::pair<std::string, std::string>>& env) {
  const std::string run_dir = script.substr(0, script.rfind('/'));
  const std::vector<std::string> argv = QsubArgv(script, run_dir);
  absl::StatusOr<CommandResult> r = RunCommand(argv, env, absl::Seconds(60));
  if (!r.ok()) return r.status();
  if (r->timed_out) return absl::DeadlineExceededError("qsub did not answer within 60s");
  if (r->exit_code != 0) {
    std::string said = Trimmed(absl::StrCat(r->err, "\n", r->out));
    return absl::InvalidArgumentError(absl::StrCat("qsub refused the job (exit ", r->exit_code,
                                                   "): ", said, " (", absl::StrJoin(argv, " "),
                                                   ")"));
  }
  std::string id = Trimmed(r->out);
  if (id.find('\n') != std::string::npos) id = id.substr(id.rfind('\n') + 1);
  if (id.empty() || id.find(' ') != std::string::npos) {
    return absl::InternalError(absl::StrCat("qsub printed no job id: '", Trimmed(r->out), "' ",
                                            Trimmed(r->err)));
  }
  return id;
}

absl::StatusOr<JobStatus> PbsBatch::Query(const std::string& job_id) {
  absl::StatusOr<CommandResult> r = RunCommand({"qstat", "-f", job_id}, {}, kCommandTimeout);
  if (!r.ok()) return r.status();
  const std::string said = Trimmed(absl::StrCat(r->err, " ", r->out));
  if (r->exit_code != 0) {
    // Torque/PBS Pro: "Unknown Job Id", "Job has finished"; Slurm's wrapper: nothing, exit 153.
    if (said.empty() || absl::StrContains(said, "Unknown") ||
        absl::StrContains(said, "has finished")) {
      return absl::NotFoundError(absl::StrCat("PBS knows no job ", job_id));
    }
    return absl::UnavailableError(absl::StrCat("qstat -f ", job_id, " exited ", r->exit_code,
                                               ": ", said));
  }
  return ParseQstatFull(r->out);
}

absl::Status PbsBatch::Cancel(const std::string& job_id) {
  absl::StatusOr<CommandResult> r = RunCommand({"qdel", job_id}, {}, kCommandTimeout);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return absl::UnavailableError(absl::StrCat("qdel ", job_id, " exited ", r->exit_code, ": ",
                                               Trimmed(absl::StrCat(r->err, " ", r->out))));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> PbsBatch::Nodes(const JobStatus& running) {
  std::vector<std::string> nodes = absl::StrSplit(running.nodelist, ',', absl::SkipEmpty());
  if (nodes.empty()) return absl::UnavailableError("qstat -f shows no exec_host for the job");
  return nodes;
}

std::vector<std::string> PbsBatch::PartitionHosts() {
  absl::StatusOr<CommandResult> r = RunCommand({"pbsnodes", "-a"}, {}, absl::Seconds(10));
  if (!r.ok() || r->exit_code != 0) return {};
  std::vector<std::string> hosts = ParsePbsnodes(r->out);
  if (hosts.size() > 8) hosts.resize(8);
  return hosts;
}

bool PbsBatch::Settled(const JobStatus& status) const {
  const std::string s = absl::AsciiStrToUpper(status.state);
  return s == "C" || s == "F" || s == "X";
}

}  // namespace dragon::daemon
