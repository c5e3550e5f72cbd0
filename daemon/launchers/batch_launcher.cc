#include "daemon/launchers/batch_launcher.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/token.h"
#include "daemon/launchers/child_process.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {
namespace {

absl::Status WriteScript(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write the job script ", tmp));
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n <= 0) {
      close(fd);
      return absl::InternalError(absl::StrCat("cannot write the job script ", tmp));
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot write the job script ", path));
  }
  return absl::OkStatus();
}

std::string Seconds(absl::Duration d) {
  return absl::FormatDuration(absl::Trunc(d, absl::Milliseconds(100)));
}

}  // namespace

BatchLauncher::~BatchLauncher() { Stop(absl::Seconds(2)); }

std::string BatchLauncher::job_id() const {
  std::lock_guard<std::mutex> lock(mu_);
  return job_id_;
}

std::vector<std::string> BatchLauncher::ExpectedNodes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return nodes_;
}

std::string BatchLauncher::Describe(const JobStatus& status) const {
  if (status.reason.empty()) return status.state;
  return absl::StrCat(status.state, " (", status.reason, ")");
}

absl::Status BatchLauncher::CancelWith(absl::Status error) {
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (job_id_.empty() || cancelled_) return error;
    cancelled_ = true;
    id = job_id_;
  }
  absl::Status c = system_->Cancel(id);
  const std::string text =
      c.ok() ? absl::StrCat(error.message(), "; cancelled it")
             : absl::StrCat(error.message(), "; cancelling it failed: ", c.message());
  return absl::Status(error.code(), text);
}

absl::Status BatchLauncher::Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) {
  run_dir_ = spec.run_dir;
  observer_ = observer;
  auto progress = [observer](const std::string& text) {
    if (observer != nullptr) {
      observer->Progress(text);
    } else {
      spdlog::info("{}", text);
    }
  };
  const std::string script = absl::StrCat(spec.run_dir, "/", system_->script_name());
  const std::string output = absl::StrCat(spec.run_dir, "/", system_->output_name());
  if (absl::Status s = WriteScript(script, system_->Script(spec)); !s.ok()) return s;
  std::vector<std::pair<std::string, std::string>> env;
  if (!spec.token.empty()) env.emplace_back(common::kTokenEnv, spec.token);
  absl::StatusOr<std::string> id = system_->Submit(script, env);
  if (!id.ok()) return id.status();
  const std::string job = absl::StrCat(system_->name(), " job ", *id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_id_ = *id;
  }
  progress(absl::StrCat("submitted ", job, " (", system_->Request(), "; script ", script,
                        ", output ", output, ")"));
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + options_.start_timeout;
  std::string last_shown;
  absl::Time next_reminder = start + absl::Seconds(10);
  int failed_queries = 0;
  while (true) {
    if (spec.stop_requested) {
      if (std::string why = spec.stop_requested(); !why.empty()) {
        return CancelWith(absl::CancelledError(absl::StrCat(
            "dragond was told to stop (", why, ") while waiting for ", job, " to start")));
      }
    }
    absl::StatusOr<JobStatus> status = system_->Query(*id);
    if (!status.ok()) {
      if (absl::IsNotFound(status.status())) {
        return CancelWith(absl::UnavailableError(absl::StrCat(
            job, " ended before it ran (", system_->name(), " no longer knows it); its output (",
            output, "): ", absl::StripTrailingAsciiWhitespace(FileTail(output, 800)))));
      }
      // A slow or restarting controller: say so, keep waiting.
      if (++failed_queries % 5 == 1) {
        progress(absl::StrCat("cannot ask for the state of ", job, ": ",
                              status.status().message()));
      }
    } else {
      const std::string shown = Describe(*status);
      if (status->phase == JobPhase::kRunning) {
        absl::StatusOr<std::vector<std::string>> nodes = system_->Nodes(*status);
        if (!nodes.ok()) {
          return CancelWith(absl::Status(nodes.status().code(),
                                         absl::StrCat(job, " runs, but its nodes are unknown: ",
                                                      nodes.status().message())));
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          nodes_ = *nodes;
        }
        progress(absl::StrCat(job, " is RUNNING on ", absl::StrJoin(*nodes, ", "), " after ",
                              Seconds(absl::Now() - start), "; its agents are starting"));
        watcher_ = std::thread([this] { Watch(); });
        return absl::OkStatus();
      }
      if (status->phase == JobPhase::kEnded) {
        return CancelWith(absl::UnavailableError(absl::StrCat(
            job, " ended before it ran: ", shown, "; its output (", output, "): ",
            absl::StripTrailingAsciiWhitespace(FileTail(output, 800)))));
      }
      if (IsHopelessPendingReason(status->reason)) {
        const std::string more = system_->Explain(*status);
        return CancelWith(absl::FailedPreconditionError(
            absl::StrCat(job, " cannot start: ", shown, more.empty() ? "" : ": ", more)));
      }
      if (shown != last_shown) {
        progress(absl::StrCat(job, ": ", shown));
        last_shown = shown;
        next_reminder = absl::Now() + absl::Seconds(10);
      } else if (absl::Now() >= next_reminder) {
        progress(absl::StrCat(job, ": still ", shown, " after ", Seconds(absl::Now() - start)));
        next_reminder = absl::Now() + absl::Seconds(10);
      }
    }
    if (absl::Now() >= deadline) {
      return CancelWith(absl::DeadlineExceededError(absl::StrCat(
          job, " did not start within ", absl::FormatDuration(options_.start_timeout),
          " (--start-timeout): ", status.ok() ? absl::StrCat("still ", Describe(*status))
                                              : std::string(status.status().message()))));
    }
    // Jobs often start within a second: look often at first.
    absl::SleepFor(absl::Now() - start < absl::Seconds(2)
                       ? std::min(options_.poll, absl::Milliseconds(200))
                       : options_.poll);
  }
}

void BatchLauncher::Watch() {
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = job_id_;
  }
  const std::string job = absl::StrCat(system_->name(), " job ", id);
  while (true) {
    const absl::Time next = absl::Now() + options_.watch;
    while (absl::Now() < next) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    absl::StatusOr<JobStatus> status = system_->Query(id);
    if (status.ok() && status->phase != JobPhase::kEnded) continue;
    if (!status.ok() && !absl::IsNotFound(status.status())) continue;  // ask again
    // A job being cancelled reads COMPLETING for a moment; the user wants to
    // know why it ended (CANCELLED, TIMEOUT, NODE_FAIL), so wait a bounded
    // while for the final state before saying.
    const absl::Time settle_by = absl::Now() + options_.settle;
    while (status.ok() && !system_->Settled(*status) && absl::Now() < settle_by) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
      }
      absl::SleepFor(std::min(options_.watch, absl::Milliseconds(200)));
      absl::StatusOr<JobStatus> again = system_->Query(id);
      if (!again.ok() && !absl::IsNotFound(again.status())) continue;  // ask again
      if (again.ok()) status = std::move(again);
      else break;  // gone from the queue: say what was seen last
    }
    std::vector<std::string> nodes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      ended_reported_ = true;
      nodes = nodes_;
    }
    const std::string output = absl::StrCat(run_dir_, "/", system_->output_name());
    const std::string why = absl::StrCat(
        job, " ended outside the service: ",
        status.ok() ? Describe(*status) : absl::StrCat("no longer known to ", system_->name()),
        "; its agents (", absl::StrJoin(nodes, ", "), ") are gone; the end of its output (",
        output, "): ", absl::StripTrailingAsciiWhitespace(FileTail(output, 600)));
    spdlog::error("{}", why);
    if (observer_ != nullptr) {
      for (const std::string& node : nodes) observer_->NodeFailed(node, why);
      observer_->Problem(why);
    }
    return;
  }
}

void BatchLauncher::Stop(absl::Duration grace) {
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    id = job_id_;
  }
  if (watcher_.joinable()) watcher_.join();
  if (id.empty()) return;
  const std::string job = absl::StrCat(system_->name(), " job ", id);
  // The agents were told to leave: the job's script ends with them.
  const absl::Time deadline = absl::Now() + grace;
  std::string last = "unknown";
  while (true) {
    absl::StatusOr<JobStatus> status = system_->Query(id);
    if (!status.ok() && absl::IsNotFound(status.status())) {
      last = "gone";
      break;
    }
    if (status.ok()) {
      last = Describe(*status);
      if (system_->Settled(*status)) break;
      if (status->phase == JobPhase::kEnded) {  // completing: it is on its way out
        if (absl::Now() >= deadline + absl::Seconds(15)) break;
        absl::SleepFor(absl::Milliseconds(200));
        continue;
      }
    }
    if (absl::Now() >= deadline) {
      bool cancel;
      {
        std::lock_guard<std::mutex> lock(mu_);
        cancel = !cancelled_;
        cancelled_ = true;
      }
      if (cancel) {
        spdlog::warn("{} is still {} {} after its agents were told to leave: cancelling it", job,
                     last, absl::FormatDuration(grace));
        if (absl::Status c = system_->Cancel(id); !c.ok()) {
          spdlog::error("cancelling {} failed: {}", job, std::string(c.message()));
        }
      }
      if (absl::Now() >= deadline + absl::Seconds(15)) {
        spdlog::error("{} is still {} 15s after it was cancelled", job, last);
        return;
      }
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  spdlog::info("{} ended: {}", job, last);
}

}  // namespace dragon::daemon
