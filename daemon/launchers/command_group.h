// Local commands that each carry the agents of one or more nodes (one srun
// step for every node of a job, one pbsdsh per host, one mpiexec for all),
// started and watched together: a command that ends takes its nodes with it,
// which is logged with its output's tail and reported as failed nodes (the
// head loses them when their agents' streams end). Used by the Slurm and PBS
// launchers; the ssh launcher has its own (it ends remote agents itself).
#ifndef DRAGON_DAEMON_LAUNCHERS_COMMAND_GROUP_H_
#define DRAGON_DAEMON_LAUNCHERS_COMMAND_GROUP_H_

#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "daemon/launchers/child_process.h"
#include "daemon/launchers/launcher.h"

namespace dragon::daemon {

struct GroupCommand {
  std::string label;  // for people: "the srun step of the agents", "pbsdsh to n3"
  ChildSpec child;    // its output goes to child.log_path (quoted when it ends)
  std::vector<std::string> nodes;  // the nodes whose agents it carries
};

class CommandGroup {
 public:
  // How Stop ends a command still running after the grace: by default
  // SIGTERM, 5 s, SIGTERM again, 5 s, then SIGKILL.
  using Ender = std::function<void(const GroupCommand& command, ChildProcess* process)>;

  CommandGroup() = default;
  ~CommandGroup();  // Stop(0)
  CommandGroup(const CommandGroup&) = delete;
  CommandGroup& operator=(const CommandGroup&) = delete;

  // Starts every command (an error names the first that cannot start; those
  // started before it are ended) and watches them from a thread.
  absl::Status Start(std::vector<GroupCommand> commands, LaunchObserver* observer);
  // Waits up to `grace` for every command to end by itself (the head told
  // the agents to leave), then ends the rest with `end` (or the default).
  // Ends no longer count as failures from the moment it is called.
  void Stop(absl::Duration grace, const Ender& end = nullptr);
  // Every command has ended (or none was started).
  bool AllEnded();
  // SIGTERM twice 5 s apart, then SIGKILL: srun ends its step on the first.
  static void DefaultEnd(const GroupCommand& command, ChildProcess* process);

 private:
  struct Running {
    GroupCommand command;
    std::optional<ChildProcess> process;
    bool reported = false;
  };
  void Monitor();
  void ReportEnd(Running* r, const std::string& how);  // mu_ held

  std::mutex mu_;
  std::vector<Running> running_;
  LaunchObserver* observer_ = nullptr;
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_COMMAND_GROUP_H_
