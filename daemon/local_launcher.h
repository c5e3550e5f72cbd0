// Runs one dragon-agent on this node as a child of dragond.
#ifndef DRAGON_DAEMON_LOCAL_LAUNCHER_H_
#define DRAGON_DAEMON_LOCAL_LAUNCHER_H_

#include <sys/types.h>

#include <atomic>
#include <string>
#include <thread>

#include "daemon/launcher.h"

namespace dragon::daemon {

class LocalLauncher final : public Launcher {
 public:
  explicit LocalLauncher(std::string node_id) : node_id_(std::move(node_id)) {}
  ~LocalLauncher() override;

  absl::Status Launch(const AgentLaunchSpec& spec) override;
  void Stop(absl::Duration grace) override;

 private:
  std::string node_id_;
  pid_t pid_ = -1;
  std::atomic<bool> exited_{false};
  std::atomic<bool> stopping_{false};
  std::thread reaper_;  // waits for the agent so an early death is logged at once
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LOCAL_LAUNCHER_H_
