// dragon-agent: one per node, launched by dragond (docs/INTERFACES.md).
// Connects to the head, pre-forks Python workers, runs the tasks it is sent
// and exits, killing its workers, when the head's stream ends.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/agent_data_plane.h"
#include "agent/agent_pool.h"
#include "agent/data_service.h"
#include "agent/head_connection.h"
#include "agent/incarnations.h"
#include "agent/node_load.h"
#include "agent/node_resources.h"
#include "agent/process_tree.h"
#include "agent/task_env.h"
#include "agent/simulated_pool.h"
#include "agent/worker_pool.h"
#include "common/dashed_flags.h"
#include "common/host.h"
#include "common/token.h"
#include "spdlog/sinks/basic_file_sink.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, head, "", "HOST:PORT of dragond's AgentService (required)");
ABSL_FLAG(std::string, node_id, "",
          "this node's id, unique in the run (default: the host name, as under srun, where one "
          "command starts the agents of every node)");
ABSL_FLAG(std::string, run_dir, "",
          "the run directory: the log goes to RUN_DIR/agent-NODE_ID.log, worker output to "
          "RUN_DIR/workers/NODE_ID/ (required)");
ABSL_FLAG(int, workers, 0, "number of Python workers; 0 = one per core");
ABSL_FLAG(std::string, python, "python3",
          "Python interpreter that runs 'python -m dragon_parsl.worker'; it must be able to "
          "import parsl and dragon_parsl");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error, critical or off");
ABSL_FLAG(int, connect_timeout, 10, "seconds to keep retrying an unreachable head at startup");
ABSL_FLAG(int, worker_ready_timeout, 120,
          "seconds a new Python worker may take to import parsl and report ready before it is "
          "killed and restarted");
ABSL_FLAG(std::string, token_file, "",
          "file holding the run's token (mode 0600); default: $DRAGON_TOKEN, which dragond's "
          "launchers set (a token is never passed on the command line)");
ABSL_FLAG(std::string, tls_ca, "", "PEM certificate of the CA that signed the head's TLS certificate");
ABSL_FLAG(std::string, gpus, "",
          "GPU ids this agent may hand out, comma-separated (default: CUDA_VISIBLE_DEVICES, "
          "ROCR_VISIBLE_DEVICES, else what nvidia-smi lists, else none); 'none' for none");
ABSL_FLAG(std::string, block_id, "",
          "the block (a batch job a Parsl provider started for DragonExecutor) this agent belongs "
          "to; 'dragonctl nodes' shows it, and the node id defaults to HOST-bBLOCK");
ABSL_FLAG(int64_t, job_end, 0,
          "when this node's allocation ends, in Unix seconds; default (0): $SLURM_JOB_END_TIME "
          "where Slurm sets it, else unknown (with both, the earlier counts). The head places no "
          "new task here from --drain-before-end seconds before it");
ABSL_FLAG(int, drain_before_end, 60,
          "seconds before the allocation's end (--job-end) from which the head places no new task "
          "on this node: tasks sent and not started go back to the queue, running ones may finish "
          "(those still running at the end are run again elsewhere)");
ABSL_FLAG(int, rejoin_timeout, 30,
          "seconds an agent that lost its head (stream broken, or no ping within the heartbeat "
          "timeout) keeps trying to register again, as a new incarnation, after killing what it "
          "ran; then it exits. 0: exit at once");
ABSL_FLAG(int, simulate_workers, 0,
          "BENCHMARK/TEST MODE, not for real runs: register this many worker slots but start "
          "no Python; every task is reported as outcome OK with EMPTY data, worker pid 0 and the "
          "error text 'simulated by dragon-agent --simulate-workers: the payload was not run' "
          "(a Parsl client cannot unpickle it). The agent registers with version '<version> "
          "(simulated workers)'. For measuring the head with hundreds of agents on one machine. "
          "0 = off (real workers); excludes --workers");
ABSL_FLAG(int64_t, simulate_task_us, 0,
          "with --simulate-workers: microseconds each simulated task occupies its slot "
          "(timers, no thread per task); 0 = ends at once");
ABSL_FLAG(std::string, shm_pool_mb, "auto",
          "size in MiB of the node's shared-memory pool for task data, a file in --shm-dir that "
          "clients and workers on the node attach; 0 = no pool. auto (default): 1/8 of the "
          "node's memory (MemTotal), at most half of the size of --shm-dir's file system, "
          "rounded down to MiB. Lazily backed: it costs memory only for the blocks in use");
ABSL_FLAG(std::string, shm_dir, "/dev/shm",
          "directory (a tmpfs) of the shared-memory pool; pools of dead agents in it are removed "
          "at start");
ABSL_FLAG(bool, ucx, true,
          "run the node's data plane: a UCX worker through which agents copy blocks of each "
          "other's shared-memory pools (task data produced on another node), and the AgentData "
          "service on the Unix socket <pool file>.sock for this node's workers and clients. "
          "Needs a pool (--shm-pool-mb). UCX honours its UCX_* variables, e.g. UCX_TLS=tcp,self "
          "to force TCP between nodes. --noucx: no data plane; task data across nodes then goes "
          "inline through the head. If UCX cannot start, the agent warns and runs without it");

namespace dragon::agent {
namespace {

constexpr char kAgentVersion[] = "0.1.0";

// Set once the log file is open; whether stderr already is that file (it is
// when dragond starts us: it sends our stdout/stderr to the same path).
bool g_logging = false;
bool g_stderr_is_log = false;

int Fail(const std::string& message) {
  if (g_logging) {
    spdlog::critical("{}", message);
    spdlog::default_logger()->flush();
  }
  // Once logging is set up, the logger's stderr sink (if any) has said it.
  if (!g_logging) std::fprintf(stderr, "dragon-agent: %s\n", message.c_str());
  return 1;
}

bool SameFile(int fd, const std::string& path) {
  struct stat a {}, b {};
  return fstat(fd, &a) == 0 && stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

absl::Status SetUpLogging(const std::string& path, const std::string& level_name) {
  const spdlog::level::level_enum level = spdlog::level::from_str(level_name);
  if (level == spdlog::level::off && level_name != "off") {
    return absl::InvalidArgumentError(absl::StrCat("unknown --log-level '", level_name, "'"));
  }
  std::shared_ptr<spdlog::logger> logger;
  try {  // spdlog reports failures by exception; keep them inside this function
    auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
    file->set_level(level);
    file->set_pattern("[%Y-%m-%d %H:%M:%S.%f] [%l] [%t] %v");
    logger = std::make_shared<spdlog::logger>("agent", file);
    // Problems also go to stderr for someone running the agent by hand;
    // when dragond starts it, stderr is this same log file already.
    g_stderr_is_log = SameFile(2, path);
    if (!g_stderr_is_log) {
      auto err = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
      err->set_level(spdlog::level::err);
      err->set_pattern("dragon-agent: %v");
      logger->sinks().push_back(err);
    }
  } catch (const spdlog::spdlog_ex& e) {
    return absl::InternalError(absl::StrCat("cannot open log file ", path, ": ", e.what()));
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  spdlog::flush_every(std::chrono::seconds(1));
  g_logging = true;
  return absl::OkStatus();
}

// The data plane when this agent has a pool and --ucx, else none; a data
// plane that cannot start is a warning, never the agent's end (task data
// across nodes then goes inline).
std::unique_ptr<AgentDataPlane> StartDataPlane(AgentPool* pool, const std::string& node_id,
                                               const std::string& head, const std::string& token,
                                               const std::string& tls_ca, bool simulated) {
  if (pool == nullptr || simulated) return nullptr;
  if (!absl::GetFlag(FLAGS_ucx)) {
    spdlog::info("no data plane (--noucx): task data across nodes goes inline");
    return nullptr;
  }
  AgentDataPlaneOptions options;
  options.node_id = node_id;
  options.head_address = head;
  options.token = token;
  options.tls_ca = tls_ca;
  options.pool_path = pool->path();
  absl::StatusOr<std::unique_ptr<AgentDataPlane>> started =
      AgentDataPlane::Start(pool->pool(), options);
  if (!started.ok()) {
    spdlog::warn("running without a data plane (task data across nodes goes inline): {} (--noucx "
                 "turns it off; UCX_* variables tune UCX)",
                 started.status().ToString());
    return nullptr;
  }
  return *std::move(started);
}

int Main(int argc, char** argv) {
  // Debian's Abseil is built with lock-order (deadlock) tracking on, and
  // gRPC's own mutexes are absl::Mutex: every lock paid for a graph lookup
  // (GraphCycles::GetId was ~7% of a simulated agent's CPU under perf).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Writes to a dead worker's pipe must fail with EPIPE, not kill the agent.
  signal(SIGPIPE, SIG_IGN);
  // SIGTERM/SIGINT/SIGHUP are taken by one thread with sigwait. They are
  // blocked first thing, before any thread exists (spdlog's flusher, gRPC's),
  // so that every thread inherits the mask and none dies of the default action.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::SetProgramUsageMessage(
      "runs Python workers for dragond on one node (started by dragond, not "
      "normally by hand).\n"
      "Usage: dragon-agent --head HOST:PORT --node-id ID --run-dir DIR [--workers N] "
      "[--python PATH] [--log-level info] [--shm-pool-mb MB|auto|0] [--shm-dir /dev/shm] "
      "[--noucx]\n"
      "In a Parsl provider's block: dragon-agent --head HOST:PORT --run-dir DIR --token-file "
      "DIR/token --block-id B [--job-end UNIX_SECONDS] [--drain-before-end S]\n"
      "Benchmark mode (no Python, results are fake and marked as such): "
      "--simulate-workers N [--simulate-task-us US]\n"
      "Flag names may be written with - or _ (--node-id = --node_id).");
  // absl's --help lists only flags from files named after the binary; ours
  // live in agent/main.cc, so say which files count.
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "agent/main.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  // The documented spelling is --node-id; absl knows only node_id.
  std::vector<std::string> arg_storage;
  std::vector<char*> args = common::UnderscoreFlagNames(argc, argv, &arg_storage);
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (rest.size() > 1) {
    std::vector<std::string> extra(rest.begin() + 1, rest.end());
    return Fail(absl::StrCat("unexpected arguments: ", absl::StrJoin(extra, " "),
                             " (see --help)"));
  }
  const std::string head = absl::GetFlag(FLAGS_head);
  const std::string block_id = absl::GetFlag(FLAGS_block_id);
  if (!block_id.empty()) {
    if (std::string problem = BlockIdProblem(block_id); !problem.empty()) return Fail(problem);
  }
  const std::string node_id = absl::GetFlag(FLAGS_node_id).empty()
                                  ? DefaultNodeId(common::Hostname(), block_id)
                                  : absl::GetFlag(FLAGS_node_id);
  const int drain_before_end = absl::GetFlag(FLAGS_drain_before_end);
  if (drain_before_end < 0 || drain_before_end > 7 * 24 * 3600) {
    return Fail("--drain-before-end must be a number of seconds in 0..604800");
  }
  if (absl::GetFlag(FLAGS_job_end) < 0) return Fail("--job-end must be Unix seconds (0: unknown)");
  const int64_t job_end_us =
      AllocationEndMicros(absl::GetFlag(FLAGS_job_end), std::getenv("SLURM_JOB_END_TIME"));
  const std::string run_dir = absl::GetFlag(FLAGS_run_dir);
  if (head.empty() || run_dir.empty()) {
    return Fail("--head and --run-dir are required (see --help)");
  }
  if (node_id.find('/') != std::string::npos) {
    return Fail(absl::StrCat("--node-id '", node_id, "' must not contain '/'"));
  }
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) return Fail(absl::StrCat("cannot create run directory ", run_dir, ": ", ec.message()));
  if (absl::Status s = SetUpLogging(absl::StrCat(run_dir, "/agent-", node_id, ".log"),
                                    absl::GetFlag(FLAGS_log_level));
      !s.ok()) {
    return Fail(std::string(s.message()));
  }

  const uint32_t cores = UsableCores();
  int workers = absl::GetFlag(FLAGS_workers);
  if (workers < 0) return Fail("--workers must be >= 0");
  const int simulate = absl::GetFlag(FLAGS_simulate_workers);
  const int64_t simulate_task_us = absl::GetFlag(FLAGS_simulate_task_us);
  if (simulate < 0 || simulate > 4096) return Fail("--simulate-workers must be in 0..4096");
  if (simulate_task_us < 0) return Fail("--simulate-task-us must be >= 0");
  if (simulate > 0 && workers > 0) return Fail("--simulate-workers and --workers exclude each other");
  if (simulate == 0 && simulate_task_us > 0) return Fail("--simulate-task-us needs --simulate-workers");
  if (simulate > 0) workers = simulate;
  if (workers == 0) workers = static_cast<int>(cores);
  if (absl::GetFlag(FLAGS_rejoin_timeout) < 0) return Fail("--rejoin-timeout must be >= 0");
  if (absl::GetFlag(FLAGS_worker_ready_timeout) < 1) return Fail("--worker-ready-timeout must be >= 1");

  // The token: from the environment (as dragond's launchers hand it over)
  // or a file; then out of the environment, so workers and tasks never see it.
  std::string token;
  if (const std::string file = absl::GetFlag(FLAGS_token_file); !file.empty()) {
    absl::StatusOr<std::string> read = common::ReadTokenFile(file);
    if (!read.ok()) return Fail(std::string(read.status().message()));
    token = *std::move(read);
  } else if (char* env = std::getenv(common::kTokenEnv); env != nullptr && *env != '\0') {
    if (absl::Status s = common::ValidateToken(env, absl::StrCat("$", common::kTokenEnv)); !s.ok()) {
      return Fail(std::string(s.message()));
    }
    token = env;
    // Scrubbed where it lies: unsetenv alone leaves the value in the initial
    // environment block that /proc/PID/environ shows.
    std::fill(env, env + token.size(), '\0');
  }
  unsetenv(common::kTokenEnv);

  absl::StatusOr<std::vector<std::string>> gpus = DetectGpus(absl::GetFlag(FLAGS_gpus));
  if (!gpus.ok()) return Fail(std::string(gpus.status().message()));
  const std::string host = common::Hostname();
  const uint64_t memory = UsableMemoryBytes();
  // Grants index these CPU numbers (the first `cores` of this process's
  // affinity); placed tasks are pinned to theirs (agent/task_env.h).
  std::vector<int> cpu_ids = AffinityCpus();
  if (cpu_ids.size() > cores) cpu_ids.resize(cores);
  const MpiPrefixConfig mpi_prefix = MpiPrefixConfigFrom(
      [](const char* name) { return static_cast<const char*>(std::getenv(name)); }, common::SelfDir(),
      [](const std::string& program) {
        const char* path = std::getenv("PATH");
        for (absl::string_view dir : absl::StrSplit(path == nullptr ? "" : path, ':')) {
          if (!dir.empty() && access(absl::StrCat(dir, "/", program).c_str(), X_OK) == 0) return true;
        }
        return false;
      });
  if (simulate > 0) {
    spdlog::warn("dragon-agent {} pid {} node {} on {}: head {}, SIMULATED workers: {} slots, "
                 "{} us per task; no task is really run (benchmark/test mode)",
                 kAgentVersion, getpid(), node_id, host, head, workers, simulate_task_us);
  } else {
    spdlog::info("dragon-agent {} pid {} node {} on {}: head {}, {} workers ({} cores, {} MiB, "
                 "gpus [{}]), python {}, token {}",
                 kAgentVersion, getpid(), node_id, host, head, workers, cores, memory >> 20,
                 absl::StrJoin(*gpus, ","), absl::GetFlag(FLAGS_python),
                 token.empty() ? "none" : "given");
    spdlog::info("placed tasks are pinned to CPUs [{}] (grant indices 0..{}); $PARSL_MPI_PREFIX "
                 "launches with {}{}",
                 absl::StrJoin(cpu_ids, ","), cpu_ids.empty() ? 0 : cpu_ids.size() - 1,
                 mpi_prefix.Describe(),
                 mpi_prefix.binder.empty() ? "" : absl::StrCat(", ranks bound by ", mpi_prefix.binder));
  }
  if (!block_id.empty() || job_end_us > 0) {
    const int64_t left_s = job_end_us > 0 ? job_end_us / 1'000'000 - absl::ToUnixSeconds(absl::Now()) : 0;
    spdlog::info("block {}; allocation end {} ({}); no new tasks from {} s before it",
                 block_id.empty() ? "-" : block_id,
                 job_end_us > 0 ? absl::FormatTime("%Y-%m-%d %H:%M:%S %Z", absl::FromUnixMicros(job_end_us),
                                                   absl::LocalTimeZone())
                                : "unknown",
                 job_end_us > 0 ? absl::StrCat("in ", left_s, " s") : "--job-end, $SLURM_JOB_END_TIME",
                 drain_before_end);
  }

  // The node's shared-memory pool; removed when this function returns (also
  // after SIGTERM/SIGINT/SIGHUP, which end RunIncarnations below).
  std::unique_ptr<AgentPool> shm_pool;
  {
    const std::string shm_dir = absl::GetFlag(FLAGS_shm_dir);
    absl::StatusOr<uint64_t> mem_total = MemTotalBytes();
    absl::StatusOr<uint64_t> pool_bytes =
        PoolBytesFromFlag(absl::GetFlag(FLAGS_shm_pool_mb), mem_total.ok() ? *mem_total : 0,
                          FileSystemBytes(shm_dir), shm_dir);
    if (!pool_bytes.ok()) return Fail(std::string(pool_bytes.status().message()));
    if (*pool_bytes == 0) {
      spdlog::info("no shared-memory pool (--shm-pool-mb {})", absl::GetFlag(FLAGS_shm_pool_mb));
    } else {
      AgentPoolOptions shm_options;
      shm_options.dir = shm_dir;
      shm_options.node_id = node_id;
      shm_options.size_bytes = *pool_bytes;
      absl::StatusOr<std::unique_ptr<AgentPool>> started = AgentPool::Start(shm_options);
      if (!started.ok()) {
        return Fail(absl::StrCat("cannot create the shared-memory pool: ",
                                 started.status().message()));
      }
      shm_pool = *std::move(started);
    }
    const int orphans = RemoveOrphanDataSockets(shm_dir, kAgentPoolPrefix);
    if (orphans > 0) spdlog::info("removed {} data socket(s) of dead agents from {}", orphans, shm_dir);
  }
  // After the pool, so that it goes first (service, data plane, then pool).
  std::unique_ptr<AgentDataPlane> data_plane = StartDataPlane(
      shm_pool.get(), node_id, head, token, absl::GetFlag(FLAGS_tls_ca), simulate > 0);
  // Tells processes of this node that find the pool that its data socket is
  // there now, or will never be (no data plane): see comm.default_pool.
  if (shm_pool != nullptr) shm_pool->pool()->MarkCreatorReady();

  HeadConnectionOptions copts;
  copts.head_address = head;
  copts.token = token;
  copts.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  copts.connect_timeout = absl::Seconds(absl::GetFlag(FLAGS_connect_timeout));
  v1::Register& reg = copts.registration;
  reg.set_node_id(node_id);
  reg.set_host(host);
  reg.set_cores(cores);
  reg.set_memory_bytes(memory);
  reg.set_pid(getpid());
  reg.set_agent_version(simulate > 0 ? absl::StrCat(kAgentVersion, " (simulated workers)")
                                     : std::string(kAgentVersion));
  reg.set_workers(static_cast<uint32_t>(workers));
  for (const std::string& gpu : *gpus) reg.add_gpus(gpu);
  reg.set_block_id(block_id);
  reg.set_job_end_us(job_end_us);
  reg.set_drain_before_end_ms(static_cast<uint32_t>(drain_before_end) * 1000u);
  if (shm_pool != nullptr) {
    reg.set_shm_pool_path(shm_pool->path());
    reg.set_shm_pool_bytes(shm_pool->capacity_bytes());
    if (data_plane != nullptr) data_plane->FillRegister(&reg);
  }
  // Every heartbeat carries the host's load (agent/node_load.h), measured
  // when it is sent: a few small /proc reads a second on the pool's thread.
  // The CPU share is that since the previous heartbeat, so one sampler
  // serves all incarnations. With simulated workers: the host alone.
  NodeLoadSampler node_load;
  // The serving incarnation's worker pool, whose workers' memory the
  // heartbeat adds up; set and cleared around its life (see serve below).
  std::atomic<const WorkerPool*> live_workers{nullptr};
  copts.fill_heartbeat = [&node_load, &live_workers, pool = shm_pool.get()](v1::Heartbeat* beat) {
    const WorkerPool* workers = live_workers.load();
    // While executables or MPI jobs run, the memory of everything the agent
    // started (one scan of /proc); else of its Python workers alone.
    *beat->mutable_load() =
        workers == nullptr ? node_load.Sample({})
                           : node_load.Sample(workers->WorkerPids(),
                                              workers->RunsExecutables() ? getpid() : 0);
    if (pool != nullptr) {
      const PoolUsage usage = pool->usage();  // the janitor's last measure: never waits
      beat->set_shm_pool_free_bytes(usage.free_bytes);
      beat->set_shm_pool_blocks(usage.blocks);
    }
  };
  HeadConnection conn(copts);

  std::thread([&conn, stop_signals] {
    int sig = 0;
    if (sigwait(&stop_signals, &sig) == 0) {
      spdlog::info("received {}; stopping", sigabbrev_np(sig) ? sigabbrev_np(sig) : "signal");
      conn.Stop(absl::StrCat("received SIG", sigabbrev_np(sig) ? sigabbrev_np(sig) : "?"));
    }
  }).detach();  // blocked in sigwait until the process exits; nothing to join

  uint64_t simulated_finished = 0;
  ServeIncarnation serve;
  if (simulate > 0) {
    serve = [&](const v1::Registered&) {
      SimulatedPoolOptions sopts;
      sopts.node_id = node_id;
      sopts.slots = workers;
      sopts.task_us = simulate_task_us;
      SimulatedPool sim(sopts, &conn);
      sim.Start();
      absl::Status status = conn.Run(&sim);
      sim.Shutdown();
      simulated_finished += sim.finished();
      return status;
    };
  } else {
    serve = [&](const v1::Registered& registered) {
      WorkerPoolOptions popts;
      popts.node_id = node_id;
      popts.run_dir = run_dir;
      popts.run_id = registered.run_id();
      popts.host = host;
      popts.workers = workers;
      popts.cores = static_cast<int>(cores);
      popts.node_env.run_id = registered.run_id();
      popts.node_env.has_gpus = !gpus->empty();
      popts.node_env.cpu_ids = cpu_ids;
      popts.node_env.mpi = mpi_prefix;
      if (shm_pool != nullptr) popts.node_env.shm_pool_path = shm_pool->path();
      if (data_plane != nullptr) popts.node_env.data_socket = data_plane->socket_path();
      popts.worker_argv = {absl::GetFlag(FLAGS_python), "-m", "dragon_parsl.worker"};
      if (registered.max_payload_bytes() > 0) popts.max_result_bytes = registered.max_payload_bytes();
      popts.ready_timeout_us = int64_t{absl::GetFlag(FLAGS_worker_ready_timeout)} * 1'000'000;
      WorkerPool pool(popts, &conn);
      if (absl::Status s = pool.Start(); !s.ok()) return s;
      // Heartbeats answer the pings that conn.Run hands the pool, on the
      // pool's thread: none before Run, none after Shutdown joined it.
      live_workers.store(&pool);
      absl::Status status = conn.Run(&pool);
      pool.Shutdown();  // kills and reaps every worker: no orphan either way
      live_workers.store(nullptr);
      return status;
    };
  }
  absl::Status status =
      RunIncarnations(&conn, absl::Seconds(absl::GetFlag(FLAGS_rejoin_timeout)), serve);
  if (!status.ok()) return Fail(std::string(status.message()));
  if (simulate > 0) {
    spdlog::info("dragon-agent exits ({} simulated tasks ended)", simulated_finished);
  } else {
    spdlog::info("dragon-agent exits");
  }
  spdlog::default_logger()->flush();
  return 0;
}

}  // namespace
}  // namespace dragon::agent

int main(int argc, char** argv) { return dragon::agent::Main(argc, argv); }
