// Runs one dragon-agent on this node as a child of dragond, and keeps it
// running: an agent that dies, or that the head declares lost (a hung one is
// SIGKILLed first), is started again after a backoff, a bounded number of
// times in a row. The new process registers as the node's next incarnation,
// which fences whatever the old one might still say.
#ifndef DRAGON_DAEMON_LAUNCHERS_LOCAL_LAUNCHER_H_
#define DRAGON_DAEMON_LAUNCHERS_LOCAL_LAUNCHER_H_

#include <sys/types.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "daemon/launchers/child_process.h"
#include "daemon/launchers/launcher.h"

namespace dragon::daemon {

struct LocalLauncherOptions {
  std::string node_id;
  // Restarts in a row before giving up; the count starts again once an agent
  // has stayed up for `stable_after`.
  int max_restarts = 5;
  absl::Duration first_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(8);
  absl::Duration stable_after = absl::Seconds(30);
};

class LocalLauncher final : public Launcher {
 public:
  explicit LocalLauncher(LocalLauncherOptions options) : options_(std::move(options)) {}
  ~LocalLauncher() override;

  std::string name() const override { return "local"; }
  absl::Status Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) override;
  std::vector<std::string> ExpectedNodes() const override { return {options_.node_id}; }
  void OnAgentLost(const AgentLoss& loss) override;
  // No more restarts; then as Launcher::Stop.
  void Stop(absl::Duration grace) override;

 private:
  absl::StatusOr<pid_t> Spawn();
  void Supervise();
  absl::Duration Backoff() const;  // mu_ held
  // Reaps the agent if it exited; returns how ("" if it still runs). mu_ held.
  std::string ReapLocked();

  const LocalLauncherOptions options_;
  AgentLaunchSpec spec_;
  LaunchObserver* observer_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  pid_t pid_ = -1;           // the running agent, -1 when none
  std::optional<ChildProcess> child_;
  absl::Time started_at_;
  bool stopping_ = false;
  bool kill_requested_ = false;  // the head lost the running agent
  std::string lost_reason_;
  int restarts_in_row_ = 0;
  std::thread supervisor_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_LOCAL_LAUNCHER_H_
