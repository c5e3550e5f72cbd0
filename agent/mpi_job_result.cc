#include "agent/mpi_job_result.h"

#include <signal.h>
#include <sys/wait.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/worker_process.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

// How much of the launcher's own output the result carries.
constexpr size_t kLauncherTail = 8u << 10;

}  // namespace

ExecutableOutcome MpiJobOutcome(MpiJob* job, const MpiLauncherConfig& config,
                                const std::string& leader_node, int64_t now) {
  const int wait_status = job->wait_status;
  v1::MpiJobResult& res = job->result;
  res.set_output_dir(job->dir);
  res.set_leader_node(leader_node);
  res.set_wall_us(now - job->start_us);
  res.set_timed_out(job->timed_out);
  for (const std::string& a : job->launcher_argv) res.add_launcher_argv(a);
  uint64_t size = 0;
  res.set_launcher_output_tail(ReadTail(
      job->kind == MpiLauncherKind::kCommand ? absl::StrCat(job->dir, "/launcher.err") : job->launcher_log,
      kLauncherTail, &size));
  const bool launcher_ok = wait_status != -1 && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  const bool ok = launcher_ok && !job->failure && !job->timed_out && !job->cancelled;
  for (uint32_t r = 0; r < job->placement.ranks(); ++r) {
    v1::MpiRankInfo* info = res.add_ranks();
    info->set_rank(r);
    info->set_host(r < job->rank_hosts.size() ? job->rank_hosts[r] : "");
    if (job->kind != MpiLauncherKind::kCommand) {
      info->set_stdout_path(RankFile(job->dir, r, "out"));
      info->set_stderr_path(RankFile(job->dir, r, "err"));
    }
    auto rep = job->reports.find(r);
    if (rep != job->reports.end()) {
      info->set_pid(rep->second.pid);
      if (!rep->second.host.empty()) info->set_host(rep->second.host);
      info->set_state(rep->second.state == "unstarted" ? "exited" : rep->second.state);
      info->set_exit_code(rep->second.exit_code);
      info->set_signal(rep->second.signal);
    } else if (ok) {
      info->set_state("exited");
    } else if (launcher_ok && !config.rank_wrapper.empty()) {
      info->set_state("exited");  // the wrapper reports every rank that does not exit 0
    } else {
      info->set_state(config.rank_wrapper.empty() ? "unknown" : "stopped");
    }
  }
  const std::string what =
      absl::StrCat("MPI job of ", job->placement.ranks(), " rank(s) on ",
                   absl::StrJoin(job->placement.hosts(), ","), " (", job->program, ")");
  ExecutableOutcome o;
  o.task_id = job->task_id;
  o.pid = job->pid;
  o.start_us = job->start_us;
  o.end_us = now;
  o.killed_by_request = job->cancelled;
  if (job->failure) {
    const RankReport& f = *job->failure;
    res.set_failed_rank(static_cast<int32_t>(f.rank));
    res.set_exit_code(f.state == "signaled" ? -1 : f.exit_code);
    res.set_signal(f.signal);
    res.set_error(absl::StrCat(what, " failed: ", f.text,
                               "; the other ranks were ended (output: ", job->dir, ")"));
  } else {
    res.set_failed_rank(-1);
    if (job->timed_out) {
      res.set_exit_code(-1);
      res.set_signal(SIGKILL);
      res.set_error(absl::StrCat(what, " timed out after ", job->timeout_s,
                                 " s; every rank was ended"));
    } else if (job->cancelled) {
      res.set_exit_code(-1);
      res.set_signal(SIGTERM);
      res.set_error(absl::StrCat(what, " was cancelled; every rank was ended"));
    } else if (wait_status != -1 && WIFEXITED(wait_status)) {
      res.set_exit_code(WEXITSTATUS(wait_status));
      if (!ok) {
        std::string tail(res.launcher_output_tail());
        if (tail.size() > 2000) tail = "..." + tail.substr(tail.size() - 2000);
        res.set_error(absl::StrCat(what, ": the launcher exited with code ",
                                   WEXITSTATUS(wait_status), " and no rank reported a failure",
                                   tail.empty() ? std::string() : absl::StrCat("; it said: ", tail)));
      }
    } else {
      res.set_exit_code(-1);
      res.set_signal(wait_status != -1 && WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0);
      res.set_error(absl::StrCat(what, ": the launcher (pid ", job->pid, ") ",
                                 DescribeExit(wait_status)));
    }
  }
  o.outcome = ok ? v1::OK : v1::APP_EXCEPTION;
  if (!ok) o.error = res.error();
  o.data = res.SerializeAsString();
  spdlog::info("task {}: {} ended after {:.3f} s: exit code {}{}", job->task_id, what,
               (now - job->start_us) / 1e6, res.exit_code(),
               ok ? "" : absl::StrCat(" (", res.error(), ")"));
  return o;
}

}  // namespace dragon::agent
