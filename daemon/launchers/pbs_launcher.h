// Inside a PBS job (PBS_JOBID and PBS_NODEFILE set; --launcher auto picks
// it): one agent on every unique host of $PBS_NODEFILE (it lists a host once
// per slot), started as --pbs-exec says:
//
//   ssh      (default) the ssh launcher itself, host by host: needs
//            password-less ssh between the job's nodes (most PBS sites allow
//            it inside a job); the token goes over ssh's stdin; an agent that
//            does not leave is ended on its node.
//   pbsdsh   `pbsdsh -h HOST dragon-agent --node-id=HOST ...` per host
//            (Torque's pbsdsh; PBS Pro's takes -n INDEX instead, not -h): the
//            MOM starts the agent inside the job, no ssh needed. pbsdsh gives
//            the task the job's environment, not dragond's, so the agent reads
//            the token from <run dir>/token (--token-file): the run directory
//            must be on a filesystem every node sees.
//   mpiexec  ONE `mpiexec -n N --ppn 1 --hosts h1,...,hN dragon-agent ...`
//            (MPICH's Hydra and Cray PALS take this syntax; Open MPI's does
//            not): agents take their host names as node ids (which must then
//            be the names in PBS_NODEFILE), the token comes from the token
//            file as with pbsdsh. Most mpiexecs end every agent when one
//            dies (MPI's all-or-nothing): one lost node is then all of them.
//
// Each command's output goes to <run dir>/{ssh,pbsdsh}-HOST.log or
// mpiexec-agents.log; a command that ends takes its nodes with it (reported
// with that log's tail). Stop: the head told the agents to leave; a command
// still running after the grace gets SIGTERM twice, then SIGKILL.
#ifndef DRAGON_DAEMON_LAUNCHERS_PBS_LAUNCHER_H_
#define DRAGON_DAEMON_LAUNCHERS_PBS_LAUNCHER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/launchers/command_group.h"
#include "daemon/launchers/launcher.h"
#include "daemon/launchers/ssh_launcher.h"

namespace dragon::daemon {

inline constexpr char kPbsExecKinds[] = "ssh, pbsdsh, mpiexec";

struct PbsLauncherOptions {
  std::string job_id;               // $PBS_JOBID
  std::vector<std::string> hosts;   // unique hosts of $PBS_NODEFILE
  std::string exec = "ssh";         // ssh, pbsdsh, mpiexec
  std::vector<std::string> ssh_command = {"ssh"};
};

// The job dragond runs in, from its environment: PBS_JOBID, the hosts of
// PBS_NODEFILE, and the program --pbs-exec names in PATH. Errors say which.
absl::StatusOr<PbsLauncherOptions> PbsJobFromEnvironment(const EnvLookup& env,
                                                         const std::string& exec,
                                                         std::vector<std::string> ssh_command);

class PbsLauncher final : public Launcher {
 public:
  explicit PbsLauncher(PbsLauncherOptions options);
  ~PbsLauncher() override;

  std::string name() const override { return "pbs"; }
  absl::Status Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) override;
  std::vector<std::string> ExpectedNodes() const override { return options_.hosts; }
  absl::Status AddNodes(const std::vector<std::string>& hosts) override;
  void Stop(absl::Duration grace) override;

  // The commands --pbs-exec pbsdsh / mpiexec run (for tests and the docs).
  static std::vector<GroupCommand> Commands(const PbsLauncherOptions& options,
                                            const AgentLaunchSpec& spec);

 private:
  const PbsLauncherOptions options_;
  std::unique_ptr<SshLauncher> ssh_;  // --pbs-exec ssh
  CommandGroup group_;                // --pbs-exec pbsdsh, mpiexec
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_PBS_LAUNCHER_H_
