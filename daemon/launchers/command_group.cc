#include "daemon/launchers/command_group.h"

#include <signal.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

CommandGroup::~CommandGroup() { Stop(absl::ZeroDuration()); }

absl::Status CommandGroup::Start(std::vector<GroupCommand> commands, LaunchObserver* observer) {
  std::lock_guard<std::mutex> lock(mu_);
  observer_ = observer;
  for (GroupCommand& command : commands) {
    absl::StatusOr<ChildProcess> process = ChildProcess::Start(command.child);
    if (!process.ok()) {
      for (Running& r : running_) {
        if (r.process) r.process->Terminate(absl::Seconds(2));
      }
      running_.clear();
      return absl::Status(process.status().code(),
                          absl::StrCat("cannot start ", command.label, ": ",
                                       process.status().message()));
    }
    spdlog::info("{} started: pid {} for {} (output in {})", command.label, process->pid(),
                 absl::StrJoin(command.nodes, ", "),
                 command.child.log_path.empty() ? "/dev/null" : command.child.log_path);
    Running r;
    r.command = std::move(command);
    r.process.emplace(*std::move(process));
    running_.push_back(std::move(r));
  }
  monitor_ = std::thread([this] { Monitor(); });
  return absl::OkStatus();
}

void CommandGroup::ReportEnd(Running* r, const std::string& how) {
  r->reported = true;
  std::string tail(absl::StripTrailingAsciiWhitespace(FileTail(r->command.child.log_path, 800)));
  const std::string why =
      absl::StrCat(r->command.label, " (pid ", r->process->pid(), ") ", how,
                   tail.empty() ? "" : absl::StrCat("; the end of ", r->command.child.log_path,
                                                    ":\n", tail));
  if (stopping_) {
    spdlog::info("{}", why);
    return;
  }
  spdlog::warn("{}; its agents ({}) are gone", why, absl::StrJoin(r->command.nodes, ", "));
  if (observer_ == nullptr) return;
  for (const std::string& node : r->command.nodes) observer_->NodeFailed(node, why);
  observer_->Problem(why);
}

void CommandGroup::Monitor() {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      for (Running& r : running_) {
        if (r.reported || !r.process) continue;
        if (std::optional<std::string> how = r.process->TryReap()) ReportEnd(&r, *how);
      }
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

bool CommandGroup::AllEnded() {
  std::lock_guard<std::mutex> lock(mu_);
  for (Running& r : running_) {
    if (r.process && !r.process->TryReap()) return false;
  }
  return true;
}

void CommandGroup::DefaultEnd(const GroupCommand& command, ChildProcess* process) {
  for (int i = 0; i < 2; ++i) {
    process->Signal(SIGTERM);
    if (process->WaitFor(absl::Seconds(5))) return;
  }
  spdlog::warn("{} (pid {}) did not end after SIGTERM twice: SIGKILL", command.label,
               process->pid());
  process->Terminate(absl::ZeroDuration());
}

void CommandGroup::Stop(absl::Duration grace, const Ender& end) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (monitor_.joinable()) monitor_.join();
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Time deadline = absl::Now() + grace;
  for (Running& r : running_) {
    if (!r.process) continue;
    const absl::Duration left = std::max(absl::ZeroDuration(), deadline - absl::Now());
    if (std::optional<std::string> how = r.process->WaitFor(left)) {
      if (!r.reported) ReportEnd(&r, *how);
      continue;
    }
    spdlog::warn("{} (pid {}) still runs {} after its agents were told to leave: ending it",
                 r.command.label, r.process->pid(), absl::FormatDuration(grace));
    if (end) {
      end(r.command, &*r.process);
    } else {
      DefaultEnd(r.command, &*r.process);
    }
    if (!r.process->WaitFor(absl::Seconds(1))) r.process->Terminate(absl::ZeroDuration());
    if (!r.reported) ReportEnd(&r, r.process->TryReap().value_or("did not end"));
  }
}

}  // namespace dragon::daemon
