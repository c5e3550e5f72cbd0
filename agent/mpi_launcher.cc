#include "agent/mpi_launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/close_fd.h"
#include "agent/mpi_command_line.h"
#include "agent/mpi_job.h"
#include "agent/mpi_job_marker.h"
#include "agent/mpi_job_result.h"
#include "agent/mpi_launcher_process.h"
#include "agent/mpi_rank_reports.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

// What one pass reads of the ranks' error files at most, so that a rank
// that floods its stderr cannot stall the pool thread.
constexpr size_t kMaxErrScanPerPass = 4u << 20;
// How often a launcher is waited for when its exit cannot be polled (no pidfd).
constexpr int64_t kExitRecheckUs = 2'000;

}  // namespace

MpiLauncher::MpiLauncher(MpiLauncherOptions options, Clock now_us)
    : options_(std::move(options)), now_us_(now_us) {
  inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0) {
    spdlog::warn("MPI launcher: inotify_init1 failed ({}); job output is polled", strerror(errno));
  }
}

MpiLauncher::~MpiLauncher() {
  for (auto& [id, job] : jobs_) {
    if (!job->ended) {
      killpg(job->pid, SIGKILL);
      kill(job->pid, SIGKILL);
      int status;
      while (waitpid(job->pid, &status, 0) < 0 && errno == EINTR) {
      }
      std::vector<int> killed = KillMarkedProcesses(job->marker);
      spdlog::info("task {}: MPI job killed at shutdown ({} more process(es) of it killed)", id,
                   killed.size());
    }
    CloseFd(&job->pid_fd);  // rank 0's stdin and stdout close with job->io
  }
  CloseFd(&inotify_fd_);
}

absl::StatusOr<int> MpiLauncher::Start(const v1::TaskAssignment& task) {
  v1::ExecutableSpec spec;
  if (!spec.ParseFromString(task.payload())) {
    return absl::InvalidArgumentError("the payload is not a serialized ExecutableSpec");
  }
  if (spec.argv_size() == 0 || spec.argv(0).empty()) {
    return absl::InvalidArgumentError("ExecutableSpec has an empty argv");
  }
  v1::MpiPlacement placement = task.grant().mpi();
  if (placement.ranks() == 0) {
    return absl::InvalidArgumentError("its MPI placement has 0 ranks");
  }
  if (placement.hosts_size() == 0) placement.add_hosts(options_.host);
  const uint64_t id = task.task_id();
  if (jobs_.count(id) != 0) return absl::AlreadyExistsError("this MPI job is already running");

  auto job = std::make_unique<MpiJob>(id, options_.io_window);
  job->kind = options_.config.kind;
  job->placement = placement;
  job->rank_hosts = RankHosts(placement);
  job->program = spec.argv(0);
  job->tag = NewRankReportTag();
  job->marker = MpiTaskMarker(options_.run_id, id);
  job->dir = absl::StrCat(options_.run_dir, "/tasks/", id);
  job->launcher_log = absl::StrCat(job->dir, "/launcher.log");
  // A job dir left by an earlier run of this task (a rerun on this node) would
  // mix with this one's output: the launcher overwrites without truncating.
  std::error_code ec;
  std::filesystem::remove_all(job->dir, ec);
  std::filesystem::create_directories(job->dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create ", job->dir, ": ", ec.message()));
  }
  // Every rank's files exist from the start, so that their paths can be handed out.
  std::vector<std::string> create;
  if (job->kind == MpiLauncherKind::kCommand) {
    job->stdout_name = "launcher.out";
    create = {"launcher.out", "launcher.err"};
  } else {
    job->stdout_name = "rank-0.out";
    create = {"launcher.log"};
    for (uint32_t r = 0; r < placement.ranks(); ++r) {
      create.push_back(absl::StrCat("rank-", r, ".out"));
      create.push_back(absl::StrCat("rank-", r, ".err"));
    }
  }
  for (const std::string& name : create) {
    const int fd = open(absl::StrCat(job->dir, "/", name).c_str(),
                        O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
      return absl::InternalError(
          absl::StrCat("cannot create ", job->dir, "/", name, ": ", strerror(errno)));
    }
    close(fd);
  }
  job->stdout_path = absl::StrCat(job->dir, "/", job->stdout_name);
  if (job->kind == MpiLauncherKind::kCommand) {
    std::string hostfile;
    for (const std::string& h : job->rank_hosts) absl::StrAppend(&hostfile, h, "\n");
    const std::string path = absl::StrCat(job->dir, "/hostfile");
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      (void)!write(fd, hostfile.data(), hostfile.size());
      close(fd);
    }
  }
  absl::StatusOr<std::vector<std::string>> argv = MpiJobArgv(
      options_.config, placement, job->dir, job->tag,
      std::vector<std::string>(spec.argv().begin(), spec.argv().end()));
  if (!argv.ok()) return argv.status();
  if (!options_.config.rank_wrapper.empty() && access(options_.config.rank_wrapper.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the rank wrapper ", options_.config.rank_wrapper, " cannot be run (", strerror(errno),
        "); install dragon-mpi-rank next to dragon-agent, or set DRAGON_MPI_RANK_WRAPPER"));
  }
  absl::StatusOr<std::string> path = ResolveProgram((*argv)[0]);
  if (!path.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the MPI launcher ", options_.config.Describe(), " cannot be started: ",
        path.status().message(), " (set DRAGON_MPI_LAUNCHER / DRAGON_MPIEXEC for the agent)"));
  }
  job->launcher_argv = *argv;
  const bool own_files = job->kind == MpiLauncherKind::kCommand;
  absl::StatusOr<LauncherProcess> launched = SpawnLauncher(
      *path, job->launcher_argv, LauncherEnvironment(spec, job->marker),
      spec.cwd().empty() ? task.cwd() : spec.cwd(),
      own_files ? job->stdout_path : job->launcher_log,
      own_files ? absl::StrCat(job->dir, "/launcher.err") : "");
  if (!launched.ok()) return launched.status();
  const pid_t pid = launched->pid;
  job->pid = pid;
  job->io.SetStdin(launched->stdin_fd);
  job->pid_fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  job->io.FollowStdout(job->stdout_path);
  if (inotify_fd_ >= 0) {
    job->wd = inotify_add_watch(inotify_fd_, job->dir.c_str(), IN_MODIFY);
    if (job->wd >= 0) watches_[job->wd] = id;
  }
  job->start_us = now_us_();
  uint32_t timeout = spec.timeout_s();
  if (task.grant().walltime_s() > 0 && (timeout == 0 || task.grant().walltime_s() < timeout)) {
    timeout = task.grant().walltime_s();
  }
  job->timeout_s = timeout;
  if (timeout > 0) job->deadline_us = job->start_us + int64_t{timeout} * 1'000'000;
  spdlog::info("task {}: MPI job started: {} ranks on {} ({} per node), launcher pid {}: {}", id,
               placement.ranks(), absl::StrJoin(placement.hosts(), ","), RanksPerNode(placement),
               pid, absl::StrJoin(job->launcher_argv, " "));
  jobs_[id] = std::move(job);
  return pid;
}

void MpiLauncher::BeginStop(MpiJob* job, int64_t now, const char* why) {
  if (job->stopping || job->ended) return;
  job->stopping = true;
  spdlog::info("task {}: ending MPI job (launcher pid {}): {}", job->task_id, job->pid, why);
  // The launcher first, so that it ends its ranks on every host itself.
  kill(job->pid, SIGTERM);
  const int64_t at = now + options_.kill_grace_us;
  if (job->kill_at_us == 0 || at < job->kill_at_us) job->kill_at_us = at;
}

void MpiLauncher::Kill(uint64_t task_id) {
  auto it = jobs_.find(task_id);
  if (it == jobs_.end()) return;
  it->second->cancelled = true;
  BeginStop(it->second.get(), now_us_(), "cancelled");
}

void MpiLauncher::Escalate(MpiJob* job, int64_t now) {
  if (job->ended) return;
  if (job->deadline_us != 0 && now >= job->deadline_us && !job->timed_out) {
    job->timed_out = true;
    BeginStop(job, now, "its time limit passed");
  }
  if (job->kill_at_us != 0 && now >= job->kill_at_us && !job->group_killed) {
    job->group_killed = true;
    spdlog::warn("task {}: the MPI launcher (pid {}) did not end the job in time; killing its "
                 "process group",
                 job->task_id, job->pid);
    killpg(job->pid, SIGKILL);
    KillMarkedProcesses(job->marker);
  }
}

void MpiLauncher::AppendPollFds(std::vector<pollfd>* fds) const {
  if (inotify_fd_ >= 0 && !jobs_.empty()) fds->push_back({inotify_fd_, POLLIN, 0});
  for (const auto& [id, job] : jobs_) {
    if (job->pid_fd >= 0) fds->push_back({job->pid_fd, POLLIN, 0});
    if (job->io.stdin_pending()) fds->push_back({job->io.stdin_fd(), POLLOUT, 0});
  }
}

void MpiLauncher::ReadInotify() {
  if (inotify_fd_ < 0) return;
  alignas(inotify_event) char buf[16384];
  std::map<uint64_t, std::vector<std::string>> changed;
  while (true) {
    const ssize_t n = read(inotify_fd_, buf, sizeof(buf));
    if (n <= 0) break;
    for (char* p = buf; p < buf + n;) {
      auto* ev = reinterpret_cast<inotify_event*>(p);
      p += sizeof(inotify_event) + ev->len;
      auto w = watches_.find(ev->wd);
      if (w == watches_.end() || ev->len == 0) continue;
      auto& names = changed[w->second];
      std::string name(ev->name);
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    }
  }
  for (auto& [id, names] : changed) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    MpiJob* job = it->second.get();
    bool errors = false;
    for (const std::string& name : names) {
      if (name == job->stdout_name) job->io.SendStdout(job->ended, &io_out_);
      if (absl::EndsWith(name, ".err")) errors = true;
    }
    if (errors) ScanErrors(job);
  }
}

void MpiLauncher::ScanErrors(MpiJob* job) {
  // Scans every error file that grew (cheap: a stat per file, reads only the new bytes).
  if (options_.config.rank_wrapper.empty()) return;
  size_t budget = kMaxErrScanPerPass;
  for (const std::string& name : job->ErrFiles()) {
    const std::string path = absl::StrCat(job->dir, "/", name);
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) continue;
    uint64_t& done = job->err_read[name];
    if (static_cast<uint64_t>(st.st_size) <= done || budget == 0) continue;
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    std::string& carry = job->err_carry[name];
    const size_t want = std::min<uint64_t>(budget, static_cast<uint64_t>(st.st_size) - done);
    std::string chunk(want, '\0');
    const ssize_t n = pread(fd, chunk.data(), want, static_cast<off_t>(done));
    close(fd);
    if (n <= 0) continue;
    chunk.resize(static_cast<size_t>(n));
    done += static_cast<uint64_t>(n);
    budget -= static_cast<size_t>(n);
    carry += chunk;
    const size_t last_nl = carry.rfind('\n');
    if (last_nl == std::string::npos) {
      if (carry.size() > 4096) carry.erase(0, carry.size() - 4096);
      continue;
    }
    for (RankReport& r : ParseRankReports(carry.substr(0, last_nl + 1), job->tag)) {
      const bool failed = r.state != "stopped";
      spdlog::info("task {}: {}", job->task_id, r.text);
      if (failed && !job->failure && !job->stopping) {
        job->failure = r;
        // The launcher normally ends the other ranks at once; if it does not
        // (hydra over ssh can hang), its group is killed after the grace.
        const int64_t at = now_us_() + options_.failure_grace_us;
        if (job->kill_at_us == 0 || at < job->kill_at_us) job->kill_at_us = at;
      }
      job->reports[r.rank] = std::move(r);
    }
    carry.erase(0, last_nl + 1);
  }
}

v1::TaskIOStarted MpiLauncher::StartedOf(const MpiJob& job) const {
  v1::TaskIOStarted s;
  s.set_output_dir(job.dir);
  s.set_leader_node(options_.node_id);
  s.set_leader_host(options_.host);
  s.set_launcher_pid(job.pid);
  s.set_ended(job.ended);
  s.set_start_us(job.start_us);
  if (job.ended) {
    *s.mutable_ranks() = job.result.ranks();
    return s;
  }
  for (uint32_t r = 0; r < job.placement.ranks(); ++r) {
    v1::MpiRankInfo* info = s.add_ranks();
    info->set_rank(r);
    info->set_host(r < job.rank_hosts.size() ? job.rank_hosts[r] : "");
    info->set_state("running");
    if (job.kind != MpiLauncherKind::kCommand) {
      info->set_stdout_path(RankFile(job.dir, r, "out"));
      info->set_stderr_path(RankFile(job.dir, r, "err"));
    }
  }
  return s;
}

MpiJob* MpiLauncher::Find(uint64_t task_id) const {
  if (auto it = jobs_.find(task_id); it != jobs_.end()) return it->second.get();
  if (auto it = finished_.find(task_id); it != finished_.end()) return it->second.get();
  return nullptr;
}

void MpiLauncher::OnTaskIO(v1::TaskIOFrame frame) {
  const uint64_t id = frame.task_id();
  MpiJob* job = Find(id);
  if (job == nullptr) {
    if (frame.open()) {
      io_out_.push_back(TaskIOErrorFrame(
          id, frame.channel(),
          absl::StrCat("task ", id, " is not an MPI job led by node ", options_.node_id,
                       " (or it ended long ago and was forgotten)")));
    }
    return;
  }
  if (frame.open()) {
    job->io.Open(frame.channel(), frame.stdout_offset());
    v1::TaskIOFrame started;
    started.set_task_id(id);
    started.set_channel(job->io.channel());
    *started.mutable_started() = StartedOf(*job);
    io_out_.push_back(std::move(started));
  } else if (frame.channel() != job->io.channel()) {
    return;  // from a client that has been replaced or went away
  }
  job->io.Receive(frame, job->ended, &io_out_);
}

std::vector<v1::TaskIOFrame> MpiLauncher::TakeTaskIO() {
  std::vector<v1::TaskIOFrame> out;
  out.swap(io_out_);
  return out;
}

std::vector<ExecutableOutcome> MpiLauncher::Collect() {
  std::vector<ExecutableOutcome> done;
  if (jobs_.empty()) return done;
  ReadInotify();
  const int64_t now = now_us_();
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    MpiJob* job = it->second.get();
    if (inotify_fd_ < 0) {  // no inotify: look at every file each pass
      ScanErrors(job);
      job->io.SendStdout(job->ended, &io_out_);
    }
    job->io.WriteStdin(&io_out_);
    Escalate(job, now);
    int status = 0;
    pid_t r;
    do {
      r = waitpid(job->pid, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
      ++it;
      continue;
    }
    done.push_back(Finish(job, r == job->pid ? status : -1, now));
    std::unique_ptr<MpiJob> ended = std::move(it->second);
    it = jobs_.erase(it);
    Remember(std::move(ended));
  }
  return done;
}

ExecutableOutcome MpiLauncher::Finish(MpiJob* job, int wait_status, int64_t now) {
  job->ended = true;
  job->end_us = now;
  job->wait_status = wait_status;
  // Whatever of the job is still around on this node goes: the launcher's
  // group (a local proxy, ranks, ssh clients) and anything else it marked.
  killpg(job->pid, SIGKILL);
  std::vector<int> leftovers = KillMarkedProcesses(job->marker);
  if (!leftovers.empty()) {
    spdlog::warn("task {}: killed {} process(es) the MPI job left on this node", job->task_id,
                 leftovers.size());
  }
  CloseFd(&job->pid_fd);
  job->io.EndStdin();
  if (job->wd >= 0) {
    inotify_rm_watch(inotify_fd_, job->wd);
    watches_.erase(job->wd);
    job->wd = -1;
  }
  ScanErrors(job);  // reports written just before the end
  ExecutableOutcome o = MpiJobOutcome(job, options_.config, options_.node_id, now);
  // Anything rank 0 wrote is still to be streamed; then the end of it.
  job->io.SendStdout(job->ended, &io_out_);
  return o;
}

void MpiLauncher::Remember(std::unique_ptr<MpiJob> job) {
  const uint64_t id = job->task_id;
  finished_[id] = std::move(job);
  finished_order_.push_back(id);
  while (finished_order_.size() > options_.keep_finished) {
    auto it = finished_.find(finished_order_.front());
    if (it != finished_.end()) finished_.erase(it);
    finished_order_.pop_front();
  }
}

std::optional<int64_t> MpiLauncher::NextWakeUs() const {
  std::optional<int64_t> next;
  auto consider = [&next](int64_t t) {
    if (!next || t < *next) next = t;
  };
  const int64_t now = jobs_.empty() ? 0 : now_us_();
  for (const auto& [id, job] : jobs_) {
    if (job->deadline_us != 0 && !job->timed_out) consider(job->deadline_us);
    if (job->kill_at_us != 0 && !job->group_killed) consider(job->kill_at_us);
    if (job->pid_fd < 0) consider(now + kExitRecheckUs);
    if (inotify_fd_ < 0) consider(now + 20'000);
  }
  return next;
}

std::optional<v1::TaskLogsAnswer> MpiLauncher::Logs(uint64_t task_id, std::optional<int32_t> rank,
                                                    uint64_t max_bytes) const {
  const MpiJob* job = Find(task_id);
  if (job == nullptr) return std::nullopt;
  if (max_bytes == 0) max_bytes = 1u << 20;
  v1::TaskLogsAnswer answer;
  auto add = [&](int32_t r, const char* stream, const std::string& path) {
    v1::TaskLogFile* f = answer.add_files();
    f->set_rank(r);
    f->set_stream(stream);
    f->set_path(path);
    f->set_host(options_.host);
    uint64_t size = 0;
    f->set_data(ReadTail(path, max_bytes, &size));
    f->set_size(size);
    f->set_truncated(size > f->data().size());
  };
  const uint32_t ranks = job->placement.ranks();
  if (rank && (*rank < 0 || static_cast<uint32_t>(*rank) >= ranks)) {
    answer.set_note(absl::StrCat("task ", task_id, " has ranks 0..", ranks - 1, ", no rank ", *rank));
    return answer;
  }
  if (job->kind == MpiLauncherKind::kCommand) {
    add(-1, "stdout", job->stdout_path);
    add(-1, "stderr", absl::StrCat(job->dir, "/launcher.err"));
    answer.set_note(absl::StrCat("the launcher (", options_.config.Describe(),
                                 ") does not split output by rank: all ranks' output is shown"));
    return answer;
  }
  for (uint32_t r = 0; r < ranks; ++r) {
    if (rank && static_cast<uint32_t>(*rank) != r) continue;
    add(static_cast<int32_t>(r), "stdout", RankFile(job->dir, r, "out"));
    add(static_cast<int32_t>(r), "stderr", RankFile(job->dir, r, "err"));
  }
  if (!rank) add(-1, "launcher", job->launcher_log);
  return answer;
}

}  // namespace dragon::agent
