#include "daemon/launchers/ssh_launcher.h"

#include <signal.h>

#include <algorithm>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "daemon/launchers/agent_command.h"
#include "daemon/launchers/host_list.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {
namespace {

// The first line the remote shell prints, before it becomes the agent.
constexpr char kPidLine[] = "dragon-agent remote pid ";

std::optional<int> RemotePid(const std::string& log_path) {
  std::ifstream in(log_path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(kPidLine, 0) != 0) continue;
    int pid = 0;
    if (absl::SimpleAtoi(line.substr(sizeof(kPidLine) - 1), &pid) && pid > 1) return pid;
  }
  return std::nullopt;
}

}  // namespace

SshLauncher::~SshLauncher() { Stop(absl::Seconds(2)); }

std::string SshLauncher::RemoteCommand(const std::string& host) const {
  const AgentCommand cmd = BuildAgentCommand(spec_, host);
  std::string line = absl::StrCat("printf '", kPidLine, "%s\\n' $$; ");
  if (!spec_.token.empty()) {
    absl::StrAppend(&line, "IFS= read -r DRAGON_TOKEN && export DRAGON_TOKEN && ");
  }
  // The agent and its tasks are no ssh session: with SSH_CLIENT set, bash
  // (as Debian and others build it) takes every `bash -c` a task starts for a
  // command run by sshd and sources ~/.bashrc first (a bash_app then paid
  // ~90 ms for pyenv's init on the test hosts, and a chatty .bashrc could
  // write into its output).
  absl::StrAppend(&line, "exec env -u SSH_CLIENT -u SSH2_CLIENT -u SSH_CONNECTION");
  for (const auto& [name, value] : spec_.forwarded_env) {
    absl::StrAppend(&line, " ", ShellQuote(absl::StrCat(name, "=", value)));
  }
  for (const std::string& arg : cmd.argv) absl::StrAppend(&line, " ", ShellQuote(arg));
  return line;
}

absl::Status SshLauncher::Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) {
  spec_ = spec;
  observer_ = observer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& host : options_.hosts) {
      if (absl::Status s = StartLocked(host); !s.ok()) return s;
    }
  }
  monitor_ = std::thread([this] { Monitor(); });
  return absl::OkStatus();
}

absl::Status SshLauncher::StartLocked(const std::string& host) {
  if (std::string problem = HostNameProblem(host); !problem.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("host '", host, "' ", problem));
  }
  Remote& remote = remotes_[host];
  if (remote.ssh && !remote.ssh->ended()) {
    return absl::AlreadyExistsError(absl::StrCat("an agent on ", host, " is already running"));
  }
  remote.log_path = absl::StrCat(spec_.run_dir, "/ssh-", host, ".log");
  remote.reported = false;
  ChildSpec child;
  child.argv = options_.ssh_command;
  for (const char* opt : {"BatchMode=yes", "ServerAliveInterval=5", "ServerAliveCountMax=3"}) {
    child.argv.insert(child.argv.end(), {"-o", opt});
  }
  child.argv.insert(child.argv.end(),
                    {"-o", absl::StrCat("ConnectTimeout=",
                                        absl::ToInt64Seconds(options_.connect_timeout)),
                     host, RemoteCommand(host)});
  child.log_path = remote.log_path;
  if (!spec_.token.empty()) child.stdin_data = spec_.token + "\n";
  absl::StatusOr<ChildProcess> ssh = ChildProcess::Start(child);
  if (!ssh.ok()) {
    return absl::Status(ssh.status().code(),
                        absl::StrCat("cannot start ssh to ", host, ": ", ssh.status().message()));
  }
  spdlog::info("agent on {}: ssh pid {} started (output in {})", host, ssh->pid(),
               remote.log_path);
  remote.ssh.emplace(*std::move(ssh));
  return absl::OkStatus();
}

absl::Status SshLauncher::AddNodes(const std::vector<std::string>& hosts) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return absl::FailedPreconditionError("dragond is stopping");
  for (const std::string& host : hosts) {
    if (absl::Status s = StartLocked(host); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void SshLauncher::Monitor() {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      for (auto& [host, remote] : remotes_) {
        if (!remote.ssh || remote.reported) continue;
        std::optional<std::string> how = remote.ssh->TryReap();
        if (!how) continue;
        remote.reported = true;
        std::string tail = FileTail(remote.log_path, 600);
        // The pid line is ours, not ssh's: leave it out of the reason.
        if (size_t at = tail.find(kPidLine); at != std::string::npos) {
          tail.erase(at, tail.find('\n', at) - at + 1);
        }
        tail = std::string(absl::StripAsciiWhitespace(tail));
        const std::string why = absl::StrCat("ssh to ", host, " ", *how,
                                             tail.empty() ? "" : ": ", tail);
        spdlog::warn("agent on {}: {}", host, why);
        if (observer_ != nullptr) observer_->NodeFailed(host, why);
      }
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

void SshLauncher::EndRemote(const std::string& host, Remote* remote) {
  if (std::optional<int> pid = RemotePid(remote->log_path)) {
    // No tty: a dropped ssh does not take the remote agent with it.
    std::vector<std::string> argv = options_.ssh_command;
    argv.insert(argv.end(), {"-o", "BatchMode=yes", "-o", "ConnectTimeout=5", host,
                             absl::StrCat("kill -TERM ", *pid, " 2>/dev/null; sleep 2; kill -KILL ",
                                          *pid, " 2>/dev/null; true")});
    absl::StatusOr<CommandResult> r = RunCommand(argv, {}, absl::Seconds(15));
    if (!r.ok() || r->exit_code != 0) {
      spdlog::error("could not end the agent (pid {}) on {}: {}", *pid, host,
                    r.ok() ? absl::StrCat("ssh exited with code ", r->exit_code, ": ", r->err)
                           : std::string(r.status().message()));
    } else {
      spdlog::info("ended the agent (pid {}) on {}", *pid, host);
    }
  }
  if (remote->ssh) remote->ssh->Terminate(absl::Seconds(2));
}

void SshLauncher::Stop(absl::Duration grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (monitor_.joinable()) monitor_.join();
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Time deadline = absl::Now() + grace;
  for (auto& [host, remote] : remotes_) {
    if (!remote.ssh) continue;
    const absl::Duration left = std::max(absl::ZeroDuration(), deadline - absl::Now());
    if (remote.ssh->WaitFor(left)) continue;  // the agent left when told to
    spdlog::warn("the agent on {} did not leave within {}: ending it", host,
                 absl::FormatDuration(grace));
    EndRemote(host, &remote);
  }
}

}  // namespace dragon::daemon
