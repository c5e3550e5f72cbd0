#include "agent/worker_pool.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/grant_files.h"
#include "agent/mpi_job_marker.h"
#include "agent/process_tree.h"
#include "agent/task_env.h"
#include "agent/worker_pool_control.h"
#include "common/host.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

// Without a wakeup the loop still looks at every worker this often, so a
// worker whose output pipe is held open by a process it forked is still
// noticed when it dies.
constexpr int kIdlePollMs = 100;
// A worker whose pipe hit EOF normally exits within microseconds; one that
// closed fd 4 and lives on is broken and is killed after this.
constexpr int64_t kEofToExitUs = 1'000'000;
// Upper bound on bytes read from one worker per loop pass, so one worker
// streaming a huge result does not starve the others.
constexpr size_t kMaxReadPerPass = 8u << 20;

}  // namespace

int64_t WorkerPool::NowUs() { return absl::ToUnixMicros(absl::Now()); }

WorkerPool::WorkerPool(WorkerPoolOptions options, TaskEventSink* sink)
    : options_(std::move(options)),
      sink_(sink),
      read_buf_(1 << 20),
      logs_(options_.host.empty() ? common::Hostname() : options_.host) {
  if (options_.workers < 1) options_.workers = 1;
  if (options_.host.empty()) options_.host = common::Hostname();
  // An agent killed on this node (kill -9, a lost node's fencing) left its MPI
  // grant files in /dev/shm: the first agent after it removes them.
  if (const int swept = common::SweepStaleGrants(); swept > 0) {
    spdlog::info("removed {} grant file(s) of agents that are gone from /dev/shm", swept);
  }
  control_ = std::make_unique<Control>(this);
  runner_ = std::make_unique<ExecutableRunner>(&NowUs);
  absl::StatusOr<MpiLauncherConfig> mpi_config = MpiLauncherConfigFromEnv();
  if (mpi_config.ok()) {
    MpiLauncherOptions mo;
    mo.node_id = options_.node_id;
    mo.host = options_.host;
    mo.run_dir = options_.run_dir;
    mo.run_id = options_.run_id;
    mo.config = *std::move(mpi_config);
    mpi_ = std::make_unique<MpiLauncher>(std::move(mo), &NowUs);
  } else {
    mpi_config_error_ = std::string(mpi_config.status().message());
    spdlog::error("MPI jobs cannot run on this node: {}", mpi_config_error_);
  }
  PoolOptions po;
  po.node_id = options_.node_id;
  po.slots = options_.workers;
  po.cores = options_.cores;
  po.ready_timeout_us = options_.ready_timeout_us;
  po.max_result_bytes = options_.max_result_bytes;
  state_ = std::make_unique<PoolState>(po, control_.get(), sink_, NowUs);
  workers_.resize(options_.workers);
}

WorkerPool::~WorkerPool() { Shutdown(); }

std::string WorkerPool::WorkerLogPath(int slot) const {
  return absl::StrCat(options_.run_dir, "/workers/", options_.node_id, "/worker-", slot, ".log");
}

absl::Status WorkerPool::Start() {
  const std::string dir = absl::StrCat(options_.run_dir, "/workers/", options_.node_id);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd_ < 0) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  {
    absl::MutexLock l(&mu_);
    started_ = true;
  }
  thread_ = std::thread([this] { Loop(); });
  absl::MutexLock l(&mu_);
  mu_.Await(absl::Condition(&start_done_));
  return start_status_;
}

std::vector<pid_t> WorkerPool::WorkerPids() const {
  absl::MutexLock l(&pids_mu_);
  return worker_pids_;
}

void WorkerPool::PublishWorkerPids() {
  std::vector<pid_t> pids;
  for (const auto& w : workers_) {
    if (w != nullptr) pids.push_back(w->proc->pid());
  }
  absl::MutexLock l(&pids_mu_);
  worker_pids_.swap(pids);
}

void WorkerPool::Wake() {
  uint64_t one = 1;
  // A full counter (never in practice) still leaves the fd readable.
  (void)!write(event_fd_, &one, sizeof(one));
}

void WorkerPool::Push(Command command) {
  {
    absl::MutexLock l(&mu_);
    inbox_.push_back(std::move(command));
  }
  Wake();
}

void WorkerPool::SubmitTasks(std::vector<v1::TaskAssignment> tasks) {
  if (tasks.empty()) return;
  Command c;
  c.tasks = std::move(tasks);
  Push(std::move(c));
}

void WorkerPool::CancelTasks(std::vector<uint64_t> task_ids, std::string reason) {
  if (task_ids.empty()) return;
  Command c;
  c.cancel_ids = std::move(task_ids);
  c.reason = std::move(reason);
  Push(std::move(c));
}

void WorkerPool::ReclaimTasks(std::vector<uint64_t> task_ids) {
  if (task_ids.empty()) return;
  Command c;
  c.reclaim_ids = std::move(task_ids);
  Push(std::move(c));
}

void WorkerPool::Ping(uint64_t seq) {
  Command c;
  c.ping_seq = seq;
  Push(std::move(c));
}

void WorkerPool::TaskIO(std::vector<v1::TaskIOFrame> frames) {
  if (frames.empty()) return;
  Command c;
  c.io = std::move(frames);
  Push(std::move(c));
}

void WorkerPool::TaskLogs(v1::TaskLogsQuery query) {
  Command c;
  c.logs.push_back(std::move(query));
  Push(std::move(c));
}

void WorkerPool::Shutdown() {
  {
    absl::MutexLock l(&mu_);
    if (!started_ || joined_) return;
    stop_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
  absl::MutexLock l(&mu_);
  joined_ = true;
  if (event_fd_ >= 0) {
    close(event_fd_);
    event_fd_ = -1;
  }
}

void WorkerPool::RunCommands() {
  std::vector<Command> commands;
  {
    absl::MutexLock l(&mu_);
    commands.swap(inbox_);
  }
  // In arrival order: a cancel must see the submit that preceded it.
  for (Command& c : commands) {
    for (v1::TaskAssignment& t : c.tasks) {
      if (t.grant().hold_only()) {
        // This node's share of an MPI gang led elsewhere: its ranks are
        // started here by the leader's launcher; nothing runs until then.
        holds_[t.task_id()] = MpiTaskMarker(options_.run_id, t.task_id());
        state_->Hold(t);  // its cores: no plain task here uses them meanwhile
        spdlog::info("task {}: holding this node's share of an MPI gang led by {}", t.task_id(),
                     t.grant().mpi().hosts_size() > 0 ? t.grant().mpi().hosts(0) : "another node");
        continue;
      }
      state_->Submit(std::move(t));
    }
    for (uint64_t id : c.cancel_ids) {
      if (auto hold = holds_.find(id); hold != holds_.end()) {
        // The gang's job ended (or was cancelled): nothing of it may stay here.
        std::vector<int> killed = KillMarkedProcesses(hold->second);
        spdlog::info("task {}: hold of its MPI gang ended ({}); {} process(es) of it left here "
                     "killed",
                     id, c.reason, killed.size());
        holds_.erase(hold);
        state_->EndHold(id);
        continue;
      }
      state_->Cancel(id, c.reason);
    }
    for (v1::TaskIOFrame& f : c.io) {
      if (mpi_ != nullptr) {
        mpi_->OnTaskIO(std::move(f));
      } else if (f.open()) {
        v1::TaskIOFrame err;
        err.set_task_id(f.task_id());
        err.set_channel(f.channel());
        err.set_error(absl::StrCat("node ", options_.node_id, " cannot launch MPI jobs: ",
                                   mpi_config_error_));
        sink_->TaskIO({std::move(err)});
      }
    }
    for (const v1::TaskLogsQuery& q : c.logs) sink_->TaskLogs(logs_.Answer(q, mpi_.get()));
    if (!c.reclaim_ids.empty()) {
      std::vector<uint64_t> released = state_->Reclaim(c.reclaim_ids);
      spdlog::info("head asked back {} task(s); {} had not started and are given back",
                   c.reclaim_ids.size(), released.size());
      if (!released.empty()) sink_->TasksReleased(std::move(released));
    }
    if (c.ping_seq != 0) {
      v1::Heartbeat beat;
      beat.set_ping_seq(c.ping_seq);
      beat.set_busy_workers(static_cast<uint32_t>(state_->busy()));
      beat.set_ready_workers(static_cast<uint32_t>(state_->busy() + state_->idle()));
      beat.set_queued_tasks(static_cast<uint32_t>(state_->queued()));
      sink_->Heartbeat(std::move(beat));
    }
  }
}

void WorkerPool::WriteTo(int slot) {
  Worker* w = workers_[slot].get();
  const int fd = w->proc->to_worker_fd();
  while (fd >= 0 && w->out_off < w->out.size()) {
    ssize_t n = write(fd, w->out.data() + w->out_off, w->out.size() - w->out_off);
    if (n > 0) {
      w->out_off += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return;  // poll for POLLOUT
    } else {
      // EPIPE: the worker is gone; its exit (seen by reaping) fails the task.
      spdlog::warn("slot {}: writing to worker pid {} failed: {}", slot, w->proc->pid(),
                   strerror(errno));
      w->proc->CloseToWorker();
      break;
    }
  }
  w->out.clear();
  w->out_off = 0;
  // A 200 MiB payload must not stay allocated for the worker's lifetime.
  if (w->out.capacity() > (4u << 20)) std::string().swap(w->out);
}

void WorkerPool::ReadFrom(int slot) {
  Worker* w = workers_[slot].get();
  size_t total = 0;
  while (w->proc->from_worker_fd() >= 0 && total < kMaxReadPerPass) {
    ssize_t n = read(w->proc->from_worker_fd(), read_buf_.data(), read_buf_.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0) {
      // EOF: the worker exited (or closed fd 4); reaping tells how.
      w->proc->CloseFromWorker();
      w->eof_us = NowUs();
      break;
    }
    total += static_cast<size_t>(n);
    absl::Status s = w->decoder.Feed(read_buf_.data(), static_cast<size_t>(n));
    // Hand over complete frames before acting on an error, so a result that
    // arrived before garbage is not lost.
    while (auto frame = w->decoder.Next()) {
      const int pid = w->proc->pid();
      switch (static_cast<common::FrameType>(frame->type)) {
        case common::FrameType::kReady:
          spdlog::info("slot {}: worker pid {} ready ({})", slot, pid, frame->body);
          state_->OnReady(slot);
          break;
        case common::FrameType::kResult:
          logs_.PythonEnded(frame->task_id);
          state_->OnTaskOutput(slot, frame->task_id, v1::OK, std::move(frame->body));
          break;
        case common::FrameType::kAppException:
          logs_.PythonEnded(frame->task_id);
          state_->OnTaskOutput(slot, frame->task_id, v1::APP_EXCEPTION, std::move(frame->body));
          break;
        case common::FrameType::kResultTooLarge: {
          uint64_t bytes = 0;
          if (!absl::SimpleAtoi(frame->body, &bytes)) {
            state_->OnProtocolError(slot, absl::DataLossError(absl::StrCat(
                                              "RESULT_TOO_LARGE frame for task ", frame->task_id,
                                              " without a size")));
            break;
          }
          state_->OnTaskTooLarge(slot, frame->task_id, bytes);
          break;
        }
        default:
          state_->OnProtocolError(
              slot, absl::DataLossError(absl::StrCat("worker sent an unexpected ",
                                                     common::FrameTypeName(frame->type),
                                                     " frame for task ", frame->task_id)));
          break;
      }
      // Any of these may have killed the worker (closing its fds).
      if (w->proc->from_worker_fd() < 0) return;
    }
    if (!s.ok()) {
      state_->OnProtocolError(slot, absl::ResourceExhaustedError(absl::StrCat(
                                        "its output cannot be read: ", s.message())));
      return;
    }
  }
}

void WorkerPool::CheckExits(bool poll_all) {
  const int64_t now = NowUs();
  for (int slot = 0; slot < static_cast<int>(workers_.size()); ++slot) {
    Worker* w = workers_[slot].get();
    if (w == nullptr) continue;
    const bool pipe_closed = w->proc->from_worker_fd() < 0;
    if (!pipe_closed && !poll_all) continue;
    std::optional<int> status = w->proc->TryReap();
    if (!status) {
      if (pipe_closed && now - w->eof_us > kEofToExitUs) {
        spdlog::warn("slot {}: worker pid {} closed its pipe but did not exit; killing it", slot,
                     w->proc->pid());
        (void)w->proc->Signal(SIGKILL);
        w->eof_us = now;  // and wait for it like for any other exit
      }
      continue;
    }
    // A result written just before exiting is still in the pipe; deliver
    // it, but hand this dead worker no new task meanwhile.
    if (!pipe_closed) {
      state_->OnWorkerExiting(slot);
      ReadFrom(slot);
    }
    if (workers_[slot].get() != w) continue;  // replaced meanwhile
    std::unique_ptr<Worker> dead = std::move(workers_[slot]);
    const std::string how = DescribeExit(*status);
    if (dead->decoder.buffered_bytes() > 0) {
      spdlog::warn("slot {}: worker pid {} died in the middle of a frame ({} bytes)", slot,
                   dead->proc->pid(), dead->decoder.buffered_bytes());
    }
    spdlog::info("slot {}: worker pid {} {}", slot, dead->proc->pid(), how);
    dead.reset();
    PublishWorkerPids();  // before OnWorkerExit, which may start its replacement
    // The agent kills workers only with SIGKILL (KillWorker), after which the
    // slot is no longer busy: a stop signal here came from outside.
    const int signal = WIFSIGNALED(*status) ? WTERMSIG(*status) : 0;
    state_->OnWorkerExit(slot, how, signal);  // may start the replacement in this slot
  }
}

void WorkerPool::CollectExecutables() {
  if (runner_->running() > 0) {
    for (ExecutableOutcome& done : runner_->Collect()) {
      if (done.outcome == v1::OK || done.outcome == v1::APP_EXCEPTION) {
        logs_.ExecutableEnded(done.task_id, done.data);
      }
      state_->OnExecutableDone(done.task_id, done.outcome, std::move(done.data),
                               std::move(done.error), done.external_signal);
    }
  }
  if (mpi_ != nullptr) {
    if (mpi_->running() > 0) {
      for (ExecutableOutcome& done : mpi_->Collect()) {
        state_->OnExecutableDone(done.task_id, done.outcome, std::move(done.data),
                                 std::move(done.error));
      }
    }
    std::vector<v1::TaskIOFrame> io = mpi_->TakeTaskIO();
    if (!io.empty()) sink_->TaskIO(std::move(io));
  }
}

void WorkerPool::Loop() {
  state_->StartAll();
  {
    absl::MutexLock l(&mu_);
    start_done_ = true;
  }
  std::vector<pollfd> fds;
  std::vector<int> fd_slot;  // slot of fds[i], -1 for the eventfd
  int64_t last_full_check = NowUs();
  while (true) {
    {
      absl::MutexLock l(&mu_);
      if (stop_) break;
    }
    fds.clear();
    fd_slot.clear();
    fds.push_back({event_fd_, POLLIN, 0});
    fd_slot.push_back(-1);
    bool reaping = false;
    for (int slot = 0; slot < static_cast<int>(workers_.size()); ++slot) {
      Worker* w = workers_[slot].get();
      if (w == nullptr) continue;
      short events = 0;
      if (w->proc->from_worker_fd() >= 0) {
        fds.push_back({w->proc->from_worker_fd(), POLLIN, 0});
        fd_slot.push_back(slot);
      } else {
        reaping = true;
      }
      if (w->proc->to_worker_fd() >= 0 && w->out_off < w->out.size()) {
        events = POLLOUT;
        fds.push_back({w->proc->to_worker_fd(), events, 0});
        fd_slot.push_back(slot);
      }
    }
    const size_t exe_fds_begin = fds.size();
    runs_executables_.store(runner_->running() > 0 || (mpi_ != nullptr && mpi_->running() > 0),
                            std::memory_order_relaxed);
    runner_->AppendPollFds(&fds);
    if (mpi_ != nullptr) mpi_->AppendPollFds(&fds);
    fd_slot.resize(fds.size(), -2);  // -2: an executable's output pipe
    int timeout_ms = reaping ? 5 : kIdlePollMs;
    for (std::optional<int64_t> wake :
         {state_->NextWakeUs(), runner_->NextWakeUs(),
          mpi_ != nullptr ? mpi_->NextWakeUs() : std::optional<int64_t>()}) {
      if (!wake) continue;
      const int64_t until = (*wake - NowUs() + 999) / 1000;
      timeout_ms = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(timeout_ms, until)));
    }
    int n = poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) {
      spdlog::critical("worker pool: poll failed: {}", strerror(errno));
      break;
    }
    for (size_t i = 0; n > 0 && i < exe_fds_begin; ++i) {
      if (fds[i].revents == 0) continue;
      const int slot = fd_slot[i];
      if (slot < 0) {
        uint64_t count;
        (void)!read(event_fd_, &count, sizeof(count));
        RunCommands();
        continue;
      }
      Worker* w = workers_[slot].get();
      if (w == nullptr) continue;
      if (fds[i].fd == w->proc->from_worker_fd()) {
        ReadFrom(slot);
      } else if (fds[i].fd == w->proc->to_worker_fd()) {
        WriteTo(slot);
      }
    }
    const int64_t now = NowUs();
    const bool full = now - last_full_check >= kIdlePollMs * 1000;
    if (full) last_full_check = now;
    CheckExits(full);
    // Reads executables' output and reaps the ones that ended (cheap when
    // none runs).
    CollectExecutables();
    state_->Tick();
    busy_.store(state_->busy(), std::memory_order_relaxed);
    ready_.store(state_->busy() + state_->idle(), std::memory_order_relaxed);
    queued_.store(static_cast<int>(state_->queued()), std::memory_order_relaxed);
  }
  StopAll();
}

void WorkerPool::StopAll() {
  if (runner_->running() > 0) {
    spdlog::info("worker pool: killing {} running executable(s)", runner_->running());
  }
  runner_.reset();  // SIGKILLs and reaps their process groups
  if (mpi_ != nullptr && mpi_->running() > 0) {
    spdlog::info("worker pool: killing {} running MPI job(s)", mpi_->running());
  }
  mpi_.reset();  // likewise, and every process marked as theirs
  for (const auto& [id, marker] : holds_) KillMarkedProcesses(marker);
  holds_.clear();
  int live = 0;
  for (auto& w : workers_) {
    if (w == nullptr) continue;
    // EOF lets an idle worker exit 0 by itself; SIGTERM stops a busy one.
    w->proc->CloseToWorker();
    (void)w->proc->Signal(SIGTERM);
    ++live;
  }
  spdlog::info("worker pool: stopping {} workers", live);
  const int64_t deadline = NowUs() + options_.term_grace_ms * 1000;
  while (NowUs() < deadline) {
    bool all = true;
    for (auto& w : workers_) {
      if (w != nullptr && !w->proc->TryReap()) all = false;
    }
    if (all) break;
    usleep(10'000);
  }
  for (int slot = 0; slot < static_cast<int>(workers_.size()); ++slot) {
    auto& w = workers_[slot];
    if (w == nullptr) continue;
    if (!w->proc->reaped()) {
      spdlog::warn("slot {}: worker pid {} still running {} ms after SIGTERM; SIGKILL", slot,
                   w->proc->pid(), options_.term_grace_ms);
      (void)w->proc->Signal(SIGKILL);
    }
    const int status = w->proc->Wait();
    spdlog::debug("slot {}: worker pid {} {}", slot, w->proc->pid(), DescribeExit(status));
    w.reset();
  }
  PublishWorkerPids();
  busy_.store(0);
  ready_.store(0);
  queued_.store(0);
  common::RemoveGrantDir(options_.node_env.run_id, options_.node_id);  // its files went with their tasks
  // And what agents killed on this node before could not remove.
  common::SweepStaleGrants();
}

}  // namespace dragon::agent
