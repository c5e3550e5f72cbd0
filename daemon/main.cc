// dragond: the head daemon of the Dragon task service.
//   dragond start [flags]   start a head (and its agents) for this allocation
//   dragond stop  [flags]   stop a running head cleanly
//   dragond agents [flags]  inside a batch job: start its agents for a head elsewhere
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/dashed_flags.h"
#include "common/head_locator.h"
#include "daemon/daemonize.h"
#include "daemon/launchers/launcher_factory.h"
#include "daemon/launchers/job_agents.h"
#include "daemon/run_dir.h"
#include "daemon/serve.h"
#include "daemon/start_config.h"
#include "daemon/stop_command.h"

ABSL_FLAG(bool, foreground, false, "start: serve in the foreground instead of daemonizing (for job scripts)");
ABSL_FLAG(std::string, listen, "",
          "start: where to listen: an address (10.0.0.5, 0.0.0.0 for every interface), a host "
          "name, or an interface (ib0); default: 127.0.0.1 with a local agent, every interface "
          "with agents on other nodes (advertising the address that routes to them)");
ABSL_FLAG(std::string, host, "", "start: the same as --listen (older name)");
ABSL_FLAG(int, port, 0, "start: port to listen on (0 = any free port)");
ABSL_FLAG(std::string, run_dir, "", "start: run directory (default $DRAGON_HOME/runs/<run id>); stop: the run to stop");
ABSL_FLAG(int, workers, 0, "start: Python workers per agent (0 = one per core)");
ABSL_FLAG(int, shm_pool_mb, -1,
          "start: each agent's shared-memory pool for task data, in MiB (dragon-agent "
          "--shm-pool-mb; -1 = the agent's default, 0 = no pool)");
ABSL_FLAG(std::string, launcher, "auto",
          "start: how agents are started: auto (slurm inside a Slurm job, pbs inside a PBS job, "
          "else local), local (one on this node), ssh (--hosts/--hostfile), slurm, pbs, or none "
          "(agents started by hand connect)");
ABSL_FLAG(std::string, agents, "", "start: the same as --launcher (older name: 'local' or 'none')");
ABSL_FLAG(std::string, hosts, "", "start, --launcher ssh: hosts to start an agent on, h1,h2,...");
ABSL_FLAG(std::string, hostfile, "",
          "start, --launcher ssh: file listing the hosts, one per line ('#' comments; repeated "
          "hosts count once)");
ABSL_FLAG(bool, allow_missing, false,
          "start: go on without the nodes whose agent could not start (they are named); "
          "default: such a node fails the start");
ABSL_FLAG(std::string, ssh_command, "ssh",
          "start, --launcher ssh: the ssh program and options before the host, e.g. "
          "'ssh -F ~/.ssh/cluster_config' (always run with BatchMode=yes)");
ABSL_FLAG(std::string, agent_env, "PYTHONPATH",
          "start: comma-separated names of variables of dragond's environment that agents on "
          "other nodes get too");
ABSL_FLAG(int, start_timeout, 120,
          "start: seconds for every agent to register and answer; dragond start fails (naming "
          "the nodes) after that unless --allow-missing");
ABSL_FLAG(int, nodes, 0,
          "start, --launcher slurm|pbs from a login node: submit a job of this many nodes "
          "(with --time) whose agents dial back to this head; without --nodes those launchers "
          "start the agents of the job dragond runs in");
ABSL_FLAG(std::string, time, "",
          "start, --launcher slurm|pbs with --nodes: the job's walltime, as sbatch takes it: "
          "MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS[:MINUTES[:SECONDS]]");
ABSL_FLAG(std::string, partition, "", "start, --launcher slurm with --nodes: sbatch --partition");
ABSL_FLAG(std::string, account, "",
          "start, --launcher slurm|pbs with --nodes: the account to charge (sbatch --account, "
          "qsub -A)");
ABSL_FLAG(std::string, queue, "", "start, --launcher pbs with --nodes: qsub -q");
ABSL_FLAG(std::string, sbatch_arg, "",
          "start, --launcher slurm with --nodes: one more sbatch option (repeat the flag for "
          "each, e.g. --sbatch-arg=--qos=debug --sbatch-arg=--constraint=cpu); they follow the "
          "job script's #SBATCH lines and override them");
ABSL_FLAG(std::string, qsub_arg, "",
          "start, --launcher pbs with --nodes: one more qsub option (repeat the flag for each)");
ABSL_FLAG(std::string, pbs_exec, "ssh",
          "start (inside a PBS job, or in the job --launcher pbs --nodes submits) and agents: "
          "how agents reach the job's other nodes: ssh (password-less ssh between the job's "
          "nodes), pbsdsh (Torque's pbsdsh -h HOST), or mpiexec (one MPICH/Hydra-style "
          "mpiexec -n N --ppn 1 --hosts ...); pbsdsh and mpiexec read the token from the run "
          "directory, which must then be on a shared filesystem");
ABSL_FLAG(std::string, python, "", "start: Python interpreter for the workers (default: python3 on PATH)");
ABSL_FLAG(bool, exit_with_parent, false, "start: shut down when the process that started dragond exits");
ABSL_FLAG(bool, no_current, false, "start: do not point $DRAGON_HOME/current at this run");
ABSL_FLAG(std::string, log_level, "info", "log level: trace, debug, info, warn, error");
ABSL_FLAG(int, max_payload_mb, 256,
          "start: largest task payload (arguments) and result, in MiB; a task over it fails "
          "alone with an error naming its size (clients and agents are told at connect)");
ABSL_FLAG(int, prefetch, 1, "start: tasks queued on an agent per worker beyond the one running (the minimum)");
ABSL_FLAG(int, max_prefetch, 16,
          "start: for short tasks the per-worker queue grows up to this, to keep ~2 ms of work "
          "queued per worker; = --prefetch turns adaptation off");
ABSL_FLAG(int64_t, keep_finished, dragon::daemon::kDefaultKeepFinished,
          "start: finished tasks the head keeps for 'dragonctl show/ps'; older ones are forgotten "
          "(memory stays bounded), whole chunks of 4096 tasks at a time, so up to ~4096 more "
          "are kept; 0 = keep none that can be dropped, -1 = keep all (memory grows with "
          "every task)");
ABSL_FLAG(std::string, agent_binary, "", "start: dragon-agent to launch (default: next to dragond)");
ABSL_FLAG(std::string, auth, "token",
          "start: 'token' (default): every client and agent must present the run's token, made "
          "by dragond and kept in <run dir>/token (mode 0600; the run dir is 0700); 'none': no "
          "authentication (anyone who reaches the port can drive the head; for benchmarks)");
ABSL_FLAG(std::string, tls_cert, "", "start: PEM certificate (chain) of the head: serve over TLS");
ABSL_FLAG(std::string, tls_key, "", "start: PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_ca, "",
          "start: PEM certificate of the CA that signed --tls-cert; agents verify the head with "
          "it and clients find it in head.json (stop: the CA to verify the head with)");
ABSL_FLAG(int, heartbeat_interval_ms, 1000, "start: the head pings every agent this often");
ABSL_FLAG(int, heartbeat_timeout_ms, 4000,
          "start: an agent not heard from for this long is lost (its running tasks run again "
          "elsewhere, its queued tasks go back to the queue); agents give up on a head that has "
          "not pinged them for this long");
ABSL_FLAG(int, node_grace, 30,
          "start: seconds queued tasks may wait for an agent to come back once none is left; "
          "then they fail with an error saying why");
ABSL_FLAG(int, infra_retries, 1,
          "start: times a task whose node is lost while it runs is run again elsewhere before "
          "it fails (not counted against Parsl's retries; a client may ask for another number)");
ABSL_FLAG(int, agent_restarts, 5,
          "start: restarts in a row of a dead or hung local agent before giving up");
ABSL_FLAG(std::string, token_file, "",
          "stop, agents: file holding the head's token (default: $DRAGON_TOKEN, then, for stop, "
          "the run's token file)");
ABSL_FLAG(std::string, head, "",
          "stop: HOST:PORT of the head to stop (default: $DRAGON_HEAD, then "
          "$DRAGON_HOME/current); agents: the head the agents dial (required)");
ABSL_FLAG(int, timeout, 30, "stop: seconds to wait for the head to exit");

namespace dragon::daemon {
namespace {

// --sbatch-arg and --qsub-arg may be repeated (absl keeps only the last value
// of a flag, and a vector flag splits on commas, which sbatch options hold):
// taken out of argv before absl parses it.
std::vector<std::string> g_sbatch_args;
std::vector<std::string> g_qsub_args;

}  // namespace

std::vector<char*> TakeRepeatedArgs(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    std::vector<std::string>* into = nullptr;
    std::string name;
    for (const char* flag : {"--sbatch-arg", "--sbatch_arg", "--qsub-arg", "--qsub_arg"}) {
      if (arg == flag || absl::StartsWith(arg, std::string(flag) + "=")) {
        name = flag;
        into = absl::StrContains(flag, "sbatch") ? &g_sbatch_args : &g_qsub_args;
      }
    }
    if (into == nullptr || i == 0) {
      rest.push_back(argv[i]);
      continue;
    }
    if (arg.size() > name.size()) {
      into->push_back(arg.substr(name.size() + 1));
    } else if (i + 1 < argc) {
      into->push_back(argv[++i]);
    } else {
      std::cerr << "dragond: " << name << " needs a value (e.g. " << name << "=--qos=debug)"
                << std::endl;
      exit(2);
    }
  }
  return rest;
}

namespace {

absl::StatusOr<std::string> AbsolutePath(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) == nullptr) {
    return absl::InternalError(absl::StrCat("getcwd failed: ", strerror(errno)));
  }
  return absl::StrCat(cwd, "/", path);
}

absl::StatusOr<StartConfig> StartConfigFromFlags() {
  StartConfig c;
  c.foreground = absl::GetFlag(FLAGS_foreground);
  c.listen = absl::GetFlag(FLAGS_listen);
  const std::string host = absl::GetFlag(FLAGS_host);
  if (!host.empty()) {
    if (!c.listen.empty() && c.listen != host) {
      return absl::InvalidArgumentError("--host is the older name of --listen: give one of them");
    }
    c.listen = host;
  }
  c.port = absl::GetFlag(FLAGS_port);
  c.run_dir = absl::GetFlag(FLAGS_run_dir);
  c.workers = absl::GetFlag(FLAGS_workers);
  c.shm_pool_mb = absl::GetFlag(FLAGS_shm_pool_mb);
  c.python = absl::GetFlag(FLAGS_python);
  c.exit_with_parent = absl::GetFlag(FLAGS_exit_with_parent);
  c.no_current = absl::GetFlag(FLAGS_no_current);
  c.log_level = absl::GetFlag(FLAGS_log_level);
  c.max_payload_mb = absl::GetFlag(FLAGS_max_payload_mb);
  c.prefetch = absl::GetFlag(FLAGS_prefetch);
  c.max_prefetch = absl::GetFlag(FLAGS_max_prefetch);
  c.keep_finished = absl::GetFlag(FLAGS_keep_finished);
  c.agent_binary = absl::GetFlag(FLAGS_agent_binary);
  c.auth = absl::GetFlag(FLAGS_auth);
  c.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  c.tls_key = absl::GetFlag(FLAGS_tls_key);
  c.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  c.heartbeat_interval_ms = absl::GetFlag(FLAGS_heartbeat_interval_ms);
  c.heartbeat_timeout_ms = absl::GetFlag(FLAGS_heartbeat_timeout_ms);
  c.node_grace_s = absl::GetFlag(FLAGS_node_grace);
  c.infra_retries = absl::GetFlag(FLAGS_infra_retries);
  c.start_timeout_s = absl::GetFlag(FLAGS_start_timeout);
  c.allow_missing = absl::GetFlag(FLAGS_allow_missing);
  c.agent_env = absl::GetFlag(FLAGS_agent_env);
  c.launcher.kind = absl::GetFlag(FLAGS_launcher);
  const std::string agents = absl::GetFlag(FLAGS_agents);
  if (!agents.empty()) {
    if (agents != "local" && agents != "none") {
      return absl::InvalidArgumentError(
          absl::StrCat("--agents '", agents, "' is not supported (use 'local' or 'none'; or "
                       "--launcher ", kLauncherKinds, ")"));
    }
    if (c.launcher.kind != "auto" && c.launcher.kind != agents) {
      return absl::InvalidArgumentError("--agents is the older name of --launcher: give one of them");
    }
    c.launcher.kind = agents;
  }
  c.launcher.agent_restarts = absl::GetFlag(FLAGS_agent_restarts);
  c.launcher.hosts = absl::GetFlag(FLAGS_hosts);
  c.launcher.hostfile = absl::GetFlag(FLAGS_hostfile);
  c.launcher.ssh_command = absl::GetFlag(FLAGS_ssh_command);
  c.launcher.nodes = absl::GetFlag(FLAGS_nodes);
  c.launcher.time = absl::GetFlag(FLAGS_time);
  c.launcher.partition = absl::GetFlag(FLAGS_partition);
  c.launcher.account = absl::GetFlag(FLAGS_account);
  c.launcher.queue = absl::GetFlag(FLAGS_queue);
  c.launcher.sbatch_args = g_sbatch_args;
  c.launcher.qsub_args = g_qsub_args;
  c.launcher.pbs_exec = absl::GetFlag(FLAGS_pbs_exec);
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

// dragond agents: the agents of the batch job this runs in, for a head elsewhere.
int Agents() {
  JobAgentsConfig c;
  c.head = absl::GetFlag(FLAGS_head);
  c.run_dir = absl::GetFlag(FLAGS_run_dir);
  c.token_file = absl::GetFlag(FLAGS_token_file);
  c.launcher.kind = absl::GetFlag(FLAGS_launcher);
  c.launcher.pbs_exec = absl::GetFlag(FLAGS_pbs_exec);
  c.launcher.ssh_command = absl::GetFlag(FLAGS_ssh_command);
  c.agent_binary = absl::GetFlag(FLAGS_agent_binary);
  if (c.agent_binary.empty()) {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    std::string self = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
    c.agent_binary = self.substr(0, self.rfind('/') + 1) + "dragon-agent";
  }
  c.workers = absl::GetFlag(FLAGS_workers);
  c.shm_pool_mb = absl::GetFlag(FLAGS_shm_pool_mb);
  c.python = absl::GetFlag(FLAGS_python);
  c.log_level = absl::GetFlag(FLAGS_log_level);
  c.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  c.agent_env = absl::GetFlag(FLAGS_agent_env);
  return RunJobAgents(c);
}

int Start() {
  absl::StatusOr<StartConfig> config = StartConfigFromFlags();
  if (!config.ok()) {
    std::cerr << "dragond: " << config.status().message() << std::endl;
    return 2;
  }
  // The launcher's options (kind, hosts, job options) are checked here too,
  // before anything starts: a mistake in them is a usage error (2), a missing
  // tool or job environment an error (1).
  if (absl::StatusOr<std::unique_ptr<Launcher>> launcher =
          MakeLauncher(config->ResolvedLauncher(), ProcessEnv());
      !launcher.ok()) {
    std::cerr << "dragond: " << launcher.status().message() << std::endl;
    return absl::IsInvalidArgument(launcher.status()) ? 2 : 1;
  }
  const std::string run_id = NewRunId();
  std::string run_dir = config->run_dir;
  if (run_dir.empty()) run_dir = absl::StrCat(dragon::common::DragonHome(), "/runs/", run_id);
  auto abs_run_dir = AbsolutePath(run_dir);
  if (!abs_run_dir.ok()) {
    std::cerr << "dragond: " << abs_run_dir.status().message() << std::endl;
    return 1;
  }
  run_dir = *abs_run_dir;
  if (auto st = MakeDirs(run_dir); !st.ok()) {
    std::cerr << "dragond: " << st.message() << std::endl;
    return 1;
  }
  // Private: the run's token, logs and task output live here.
  if (chmod(run_dir.c_str(), 0700) != 0) {
    std::cerr << "dragond: cannot make " << run_dir << " private (chmod 700): " << strerror(errno)
              << std::endl;
    return 1;
  }
  // A live head already owns this run directory: refuse rather than clobber.
  if (auto existing = dragon::common::ReadRunInfo(run_dir + "/head.json"); existing.ok()) {
    if (existing->pid() > 0 && kill(existing->pid(), 0) == 0) {
      std::cerr << "dragond: a head (pid " << existing->pid() << ", " << existing->address()
                << ") is already running in " << run_dir << std::endl;
      return 1;
    }
  }
  const std::string log_file = run_dir + "/dragond.log";

  if (config->foreground) {
    if (auto st = SetUpLogging(log_file, config->log_level, true); !st.ok()) {
      std::cerr << "dragond: " << st.message() << std::endl;
      return 1;
    }
    return Serve(*config, run_dir, run_id, -1);
  }

  return Daemonize(log_file, config->log_level,
                   [&](int ready_fd) { return Serve(*config, run_dir, run_id, ready_fd); });
}

}  // namespace
}  // namespace dragon::daemon

int main(int argc, char** argv) {
  // Debian's Abseil is built with lock-order (deadlock) tracking on, and
  // gRPC's own mutexes are absl::Mutex: every lock paid for a graph lookup.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Writing to a child that already died (an ssh whose stdin carries the
  // token) must fail with EPIPE, not kill the head.
  signal(SIGPIPE, SIG_IGN);
  absl::SetProgramUsageMessage(
      "the head daemon of the Dragon task service.\n\n"
      "Usage:\n"
      "  dragond start [--foreground] [--launcher auto|local|ssh|slurm|pbs|none] [--listen A]\n"
      "                [--hosts h1,h2 | --hostfile F] [--port P] [--workers N] [--run-dir D] ...\n"
      "  dragond start --launcher slurm --nodes N --time T [--partition P] [--account A]\n"
      "                [--sbatch-arg ARG]... [--listen A]                    (from a login node)\n"
      "  dragond start --launcher pbs --nodes N --time T [--queue Q] [--account A]\n"
      "                [--qsub-arg ARG]... [--pbs-exec ssh|pbsdsh|mpiexec]  (from a login node)\n"
      "  dragond stop  [--head HOST:PORT | --run-dir D] [--timeout S]\n"
      "  dragond agents --head HOST:PORT --run-dir D [--pbs-exec X]        (inside a batch job)\n\n"
      "start: runs the head and its agents (one on this node; inside a Slurm or PBS job one on\n"
      "every node of the job; with --launcher ssh one on each host), waits until they are\n"
      "ready, prints the address and writes <run dir>/head.json ($DRAGON_HOME/current points\n"
      "at the newest run).\n"
      "With --launcher slurm|pbs and --nodes it submits that job itself, shows how it waits,\n"
      "and its agents dial back to this head; stop cancels it.\n"
      "stop: asks the head found via --head, $DRAGON_HEAD, --run-dir or $DRAGON_HOME/current\n"
      "to stop its agents and exit, and waits for it.\n"
      "agents: inside a batch job, starts one agent on every node of the job for the head at\n"
      "--head (token from $DRAGON_TOKEN) and waits until they are gone; the job script of\n"
      "--launcher pbs runs it.\n\n"
      "Run 'dragond --help' for every flag.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "daemon/main.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> kept = dragon::daemon::TakeRepeatedArgs(argc, argv);
  std::vector<std::string> storage;
  std::vector<char*> args =
      dragon::common::UnderscoreFlagNames(static_cast<int>(kept.size()), kept.data(), &storage);
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() != 2) {
    std::cerr << "dragond: expected one command, 'start', 'stop' or 'agents' (see dragond --help)"
              << std::endl;
    return 2;
  }
  const std::string command = positional[1];
  if (command == "start") return dragon::daemon::Start();
  if (command == "agents") return dragon::daemon::Agents();
  if (command == "stop") {
    dragon::daemon::StopOptions stop;
    stop.locate.explicit_address = absl::GetFlag(FLAGS_head);
    stop.locate.run_dir = absl::GetFlag(FLAGS_run_dir);
    stop.locate.token_file = absl::GetFlag(FLAGS_token_file);
    stop.locate.tls_ca = absl::GetFlag(FLAGS_tls_ca);
    stop.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout));
    return dragon::daemon::Stop(stop);
  }
  std::cerr << "dragond: unknown command '" << command
            << "' (use 'start', 'stop' or 'agents'; see dragond --help)" << std::endl;
  return 2;
}
