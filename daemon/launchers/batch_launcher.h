// From a login node: dragond submits the allocation itself as a batch job
// whose script starts one agent per node, and the agents dial back to the
// head (`dragond start --launcher slurm|pbs --nodes N --time T ...`). What
// is the same for Slurm and PBS lives here; a BatchSystem (slurm_batch.h,
// pbs_batch.h) knows the commands and the script.
//
// Launch writes the script into the run directory, submits it (the run's
// token in the submitting command's environment, which it hands to the job),
// reports the job id, its state and pending reason through
// LaunchObserver::Progress while it waits, and returns once the job runs (its
// nodes are then ExpectedNodes). A job that ends before running, waits for a
// reason that never passes (the partition cannot hold it, ...), does not run
// within the start timeout, or whose wait dragond is told to stop is
// cancelled, and Launch fails naming its state and reason. While the head
// runs, a job that ends outside the service (scancel/qdel by hand, walltime,
// node failure) is logged, reported as a launch problem and its nodes as
// failed (the head loses their agents anyway). Stop: the agents were told to
// leave, so the job ends by itself; one still queued after the grace is
// cancelled, and Stop waits (up to 15 s) until the queue no longer lists it.
#ifndef DRAGON_DAEMON_LAUNCHERS_BATCH_LAUNCHER_H_
#define DRAGON_DAEMON_LAUNCHERS_BATCH_LAUNCHER_H_

#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/launchers/launcher.h"
#include "daemon/launchers/slurm_tools.h"

namespace dragon::daemon {

class BatchSystem {
 public:
  virtual ~BatchSystem() = default;
  virtual std::string name() const = 0;         // "Slurm", "PBS": "Slurm job 12"
  virtual std::string launcher() const = 0;     // "slurm", "pbs"
  virtual std::string script_name() const = 0;  // in the run dir: slurm-job.sh
  virtual std::string output_name() const = 0;  // in the run dir: slurm-job.out
  // What the submission asks for, for the first progress line ("2 nodes for 00:05:00").
  virtual std::string Request() const = 0;
  // The job script (it holds no secret).
  virtual std::string Script(const AgentLaunchSpec& spec) const = 0;
  // Submits `script`; returns the job id, or an error with the tool's own
  // message (sbatch: error: invalid partition ...).
  virtual absl::StatusOr<std::string> Submit(
      const std::string& script, const std::vector<std::pair<std::string, std::string>>& env) = 0;
  // NotFound once the batch system no longer knows the job.
  virtual absl::StatusOr<JobStatus> Query(const std::string& job_id) = 0;
  virtual absl::Status Cancel(const std::string& job_id) = 0;
  // The node ids of a running job (its agents register under them).
  virtual absl::StatusOr<std::vector<std::string>> Nodes(const JobStatus& running) = 0;
  // Hosts of the queue/partition, to pick the address agents reach the head at.
  virtual std::vector<std::string> PartitionHosts() = 0;
  // More words on a job that cannot start (e.g. the partition's size).
  virtual std::string Explain(const JobStatus& status) { (void)status; return ""; }
  // Gone from the queue (squeue no longer lists it).
  virtual bool Settled(const JobStatus& status) const = 0;
};

struct BatchLauncherOptions {
  absl::Duration start_timeout = absl::Seconds(120);  // for the job to run
  absl::Duration poll = absl::Seconds(1);             // while waiting (faster the first 2 s)
  absl::Duration watch = absl::Seconds(1);            // while the head runs
  absl::Duration settle = absl::Seconds(10);          // for an ended job's final state
};

class BatchLauncher final : public Launcher {
 public:
  BatchLauncher(std::unique_ptr<BatchSystem> system, BatchLauncherOptions options)
      : system_(std::move(system)), options_(options) {}
  ~BatchLauncher() override;

  std::string name() const override { return system_->launcher(); }
  absl::Status Launch(const AgentLaunchSpec& spec, LaunchObserver* observer) override;
  std::vector<std::string> ExpectedNodes() const override;
  std::vector<std::string> ListenPeers() const override { return system_->PartitionHosts(); }
  void Stop(absl::Duration grace) override;

  std::string job_id() const;

 private:
  // Cancels the job (once) and returns `error` with "; cancelled it" or why not.
  absl::Status CancelWith(absl::Status error);
  void Watch();
  std::string Describe(const JobStatus& status) const;  // "PENDING (Resources)"

  std::unique_ptr<BatchSystem> system_;
  const BatchLauncherOptions options_;
  std::string run_dir_;
  LaunchObserver* observer_ = nullptr;
  mutable std::mutex mu_;
  std::string job_id_;
  std::vector<std::string> nodes_;
  bool cancelled_ = false;
  bool stopping_ = false;
  bool ended_reported_ = false;
  std::thread watcher_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_BATCH_LAUNCHER_H_
