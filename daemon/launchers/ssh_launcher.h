// Starts one agent per host over ssh, all at once: `dragond start --launcher
// ssh --hosts h1,h2` (or --hostfile F), and `dragonctl nodes add HOST` later.
// ssh runs in BatchMode (never a prompt) with the user's ssh configuration;
// the token reaches the agent on the remote shell's stdin, so it is on no
// command line here or there. Each ssh's output goes to
// <run dir>/ssh-HOST.log; an ssh that ends before its agent registered is a
// node that failed to start (reported with that log's tail).
#ifndef DRAGON_DAEMON_LAUNCHERS_SSH_LAUNCHER_H_
#define DRAGON_DAEMON_LAUNCHERS_SSH_LAUNCHER_H_

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/launchers/child_process.h"
#include "daemon/launchers/launcher.h"

namespace dragon::daemon {

struct SshLauncherOptions {
  std::vector<std::string> hosts;
  // The ssh program and options before the host, e.g. {"ssh", "-F", "cfg"}.
  std::vector<std::string> ssh_command = {"ssh"};
  absl::Duration connect_timeout = absl::Seconds(10);
};

class SshLauncher final : public Launcher {
 public:
  explicit SshLauncher(SshLauncherOptions options) : options_(std::move(options)) {}
  ~SshLauncher() override;

  std::string name() const override { return "ssh"; }
  absl::Status Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) override;
  std::vector<std::string> ExpectedNodes() const override { return options_.hosts; }
  absl::Status AddNodes(const std::vector<std::string>& hosts) override;
  void Stop(absl::Duration grace) override;

  // The command line ssh runs on `host` (for tests and --help): the agent's
  // command, quoted for the remote shell, reading the token from stdin.
  std::string RemoteCommand(const std::string& host) const;

 private:
  struct Remote {
    std::string log_path;
    std::optional<ChildProcess> ssh;
    bool reported = false;  // its end was told to the observer
  };
  absl::Status StartLocked(const std::string& host);
  void Monitor();
  // Ends the agent of `host` on its node (its pid is the first line the
  // remote shell printed), then the local ssh.
  void EndRemote(const std::string& host, Remote* remote);

  const SshLauncherOptions options_;
  AgentLaunchSpec spec_;
  LaunchObserver* observer_ = nullptr;
  std::mutex mu_;
  std::map<std::string, Remote> remotes_;
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_SSH_LAUNCHER_H_
