// dragond: the head daemon of the Dragon task service.
//   dragond start [flags]   start a head (and its agents) for this allocation
//   dragond stop  [flags]   stop a running head cleanly
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <atomic>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/dashed_flags.h"
#include "common/head_locator.h"
#include "daemon/agent_stream.h"
#include "daemon/daemonize.h"
#include "daemon/head.h"
#include "common/host.h"
#include "common/token.h"
#include "common/transport.h"
#include "daemon/launchers/local_launcher.h"
#include "daemon/run_dir.h"
#include "daemon/services.h"
#include "daemon/shutdown_signal.h"
#include "daemon/stop_command.h"
#include "grpcpp/grpcpp.h"
#include "proto/head.grpc.pb.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(bool, foreground, false, "start: serve in the foreground instead of daemonizing (for job scripts)");
ABSL_FLAG(std::string, host, "127.0.0.1", "start: address to listen on (0.0.0.0 for all interfaces)");
ABSL_FLAG(int, port, 0, "start: port to listen on (0 = any free port)");
ABSL_FLAG(std::string, run_dir, "", "start: run directory (default $DRAGON_HOME/runs/<run id>); stop: the run to stop");
ABSL_FLAG(int, workers, 0, "start: Python workers per agent (0 = one per core)");
ABSL_FLAG(std::string, agents, "local", "start: where to start agents: 'local' (one on this node) or 'none'");
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
          "stop: file holding the head's token (default: $DRAGON_TOKEN, then the run's token file)");
ABSL_FLAG(std::string, head, "", "stop: HOST:PORT of the head to stop (default: $DRAGON_HEAD, then $DRAGON_HOME/current)");
ABSL_FLAG(int, timeout, 30, "stop: seconds to wait for the head to exit");

namespace dragon::daemon {
namespace {

constexpr char kVersion[] = "0.1.0";

std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  buf[n] = '\0';
  std::string path(buf);
  return path.substr(0, path.rfind('/'));
}

using common::Hostname;

absl::StatusOr<std::string> AbsolutePath(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) == nullptr) {
    return absl::InternalError(absl::StrCat("getcwd failed: ", strerror(errno)));
  }
  return absl::StrCat(cwd, "/", path);
}

absl::Status CheckStartFlags() {
  int port = absl::GetFlag(FLAGS_port);
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--port ", port, " is not in 0..65535"));
  }
  if (absl::GetFlag(FLAGS_workers) < 0 || absl::GetFlag(FLAGS_workers) > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("--workers ", absl::GetFlag(FLAGS_workers), " is not in 0..4096"));
  }
  const std::string agents = absl::GetFlag(FLAGS_agents);
  if (agents != "local" && agents != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--agents '", agents, "' is not supported (use 'local' or 'none')"));
  }
  int mb = absl::GetFlag(FLAGS_max_payload_mb);
  if (mb < 1 || mb > 1900) {
    return absl::InvalidArgumentError(absl::StrCat("--max-payload-mb ", mb, " is not in 1..1900"));
  }
  if (absl::GetFlag(FLAGS_prefetch) < 0 || absl::GetFlag(FLAGS_prefetch) > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prefetch ", absl::GetFlag(FLAGS_prefetch), " is not in 0..1000"));
  }
  if (absl::GetFlag(FLAGS_max_prefetch) < absl::GetFlag(FLAGS_prefetch) ||
      absl::GetFlag(FLAGS_max_prefetch) > 1000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-prefetch ", absl::GetFlag(FLAGS_max_prefetch), " is not in --prefetch (",
        absl::GetFlag(FLAGS_prefetch), ")..1000"));
  }
  if (absl::GetFlag(FLAGS_host).empty()) return absl::InvalidArgumentError("--host is empty");
  const std::string auth = absl::GetFlag(FLAGS_auth);
  if (auth != "token" && auth != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("--auth '", auth, "' is not supported (use 'token' or 'none')"));
  }
  if (absl::GetFlag(FLAGS_tls_cert).empty() != absl::GetFlag(FLAGS_tls_key).empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!absl::GetFlag(FLAGS_tls_ca).empty() && absl::GetFlag(FLAGS_tls_cert).empty()) {
    return absl::InvalidArgumentError("--tls-ca needs --tls-cert and --tls-key");
  }
  const int interval = absl::GetFlag(FLAGS_heartbeat_interval_ms);
  const int timeout = absl::GetFlag(FLAGS_heartbeat_timeout_ms);
  if (interval < 50 || interval > 60000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--heartbeat-interval-ms ", interval, " is not in 50..60000"));
  }
  if (timeout < 2 * interval || timeout > 600000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--heartbeat-timeout-ms ", timeout, " must be at least twice --heartbeat-interval-ms (",
        interval, ") and at most 600000"));
  }
  if (absl::GetFlag(FLAGS_node_grace) < 0 || absl::GetFlag(FLAGS_node_grace) > 86400) {
    return absl::InvalidArgumentError(
        absl::StrCat("--node-grace ", absl::GetFlag(FLAGS_node_grace), " is not in 0..86400"));
  }
  if (absl::GetFlag(FLAGS_infra_retries) < 0 ||
      absl::GetFlag(FLAGS_infra_retries) > static_cast<int>(kMaxInfraRetries)) {
    return absl::InvalidArgumentError(absl::StrCat("--infra-retries ",
                                                   absl::GetFlag(FLAGS_infra_retries),
                                                   " is not in 0..", kMaxInfraRetries));
  }
  if (absl::GetFlag(FLAGS_agent_restarts) < 0 || absl::GetFlag(FLAGS_agent_restarts) > 1000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--agent-restarts ", absl::GetFlag(FLAGS_agent_restarts), " is not in 0..1000"));
  }
  return ValidateKeepFinished(absl::GetFlag(FLAGS_keep_finished));
}

// Serves until a signal, a Shutdown RPC or the death of the parent, then
// stops agents and sessions in order. `ready_fd` (or -1) receives one line,
// "OK <address>" or "ERROR <message>", for the process that daemonized us.
int Serve(const std::string& run_dir, const std::string& run_id, int ready_fd) {
  auto report = [&](const std::string& line) {
    if (ready_fd < 0) return;
    std::string text = line + "\n";
    (void)!write(ready_fd, text.data(), text.size());
    close(ready_fd);
    ready_fd = -1;
  };
  std::string written_token_file;  // removed again if the start fails
  auto fail = [&](const absl::Status& st) {
    if (!written_token_file.empty()) unlink(written_token_file.c_str());
    spdlog::error("{}", std::string(st.message()));
    report(absl::StrCat("ERROR ", st.message()));
    if (ready_fd < 0 && !absl::GetFlag(FLAGS_foreground)) return 1;
    std::cerr << "dragond: " << st.message() << std::endl;
    return 1;
  };

  ShutdownSignal shutdown;
  shutdown.WatchSignals();
  if (absl::GetFlag(FLAGS_exit_with_parent)) {
    shutdown.WatchParent();
  }

  std::string agent_binary = absl::GetFlag(FLAGS_agent_binary);
  if (agent_binary.empty()) agent_binary = SelfDir() + "/dragon-agent";
  const bool local_agent = absl::GetFlag(FLAGS_agents) == "local";
  if (local_agent && access(agent_binary.c_str(), X_OK) != 0) {
    return fail(absl::NotFoundError(
        absl::StrCat("cannot find dragon-agent at ", agent_binary,
                     " (it is installed next to dragond; or pass --agent-binary)")));
  }

  // The run's secret, in the 0700 run directory: clients on this node find
  // it there, agents get it through their environment.
  std::string token;
  const std::string token_path = absl::StrCat(run_dir, "/", common::kTokenFileName);
  if (absl::GetFlag(FLAGS_auth) == "token") {
    absl::StatusOr<std::string> made = common::NewToken();
    if (!made.ok()) return fail(made.status());
    token = *std::move(made);
    if (auto st = common::WriteTokenFile(token_path, token); !st.ok()) return fail(st);
    written_token_file = token_path;
  } else {
    unlink(token_path.c_str());
    spdlog::warn("authentication is off (--auth none): anyone who reaches this head's port can "
                 "submit tasks, cancel them and stop the head");
  }
  const bool tls = !absl::GetFlag(FLAGS_tls_cert).empty();

  HeadOptions options;
  options.run_id = run_id;
  options.version = kVersion;
  options.max_payload_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_max_payload_mb)) << 20;
  options.prefetch_per_worker = absl::GetFlag(FLAGS_prefetch);
  options.max_prefetch_per_worker = absl::GetFlag(FLAGS_max_prefetch);
  options.keep_finished = absl::GetFlag(FLAGS_keep_finished);
  options.membership.heartbeat_interval = absl::Milliseconds(absl::GetFlag(FLAGS_heartbeat_interval_ms));
  options.membership.heartbeat_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_heartbeat_timeout_ms));
  options.membership.no_node_grace = absl::Seconds(absl::GetFlag(FLAGS_node_grace));
  options.infra_retries = static_cast<uint32_t>(absl::GetFlag(FLAGS_infra_retries));
  options.auth = !token.empty();
  options.tls = tls;
  Head head(options);

  const std::string host = absl::GetFlag(FLAGS_host);
  const std::string listen = absl::StrCat(host, ":", absl::GetFlag(FLAGS_port));
  int selected_port = 0;
  grpc::ServerBuilder builder;
  common::ServerTransport transport;
  transport.tls.cert = absl::GetFlag(FLAGS_tls_cert);
  transport.tls.key = absl::GetFlag(FLAGS_tls_key);
  transport.max_receive_bytes = options.max_payload_bytes + common::kMessageHeadroomBytes;
  if (auto st = common::ConfigureServer(&builder, listen, transport, &selected_port); !st.ok()) {
    return fail(st);
  }
  const common::TokenCheck auth(
      token, absl::StrCat("$", common::kTokenEnv, " or the token file of the run (", token_path,
                          ", named in head.json)"));

  const std::string dial_host = (host == "0.0.0.0" || host == "::" || host == "[::]") ? Hostname() : host;
  std::string address;  // set once listening; read by the service
  HeadServiceImpl head_service(
      &head, &auth, [&shutdown](const std::string& why) { shutdown.Request(why); },
      "", run_dir, absl::Seconds(10));
  AgentServiceImpl agent_service(&head, &auth);
  builder.RegisterService(&head_service);
  builder.RegisterService(&agent_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    return fail(absl::UnavailableError(absl::StrCat(
        "cannot listen on ", listen, " (address in use, or not an address of this host?)")));
  }
  address = absl::StrCat(dial_host, ":", selected_port);
  head_service.set_address(address);
  spdlog::info("dragond {} listening on {} (run {}, run dir {}, auth {}, tls {}, heartbeat {} ms / "
               "timeout {} ms, node grace {} s, infra retries {})",
               kVersion, address, run_id, run_dir, token.empty() ? "none" : "token",
               tls ? "on" : "off", absl::GetFlag(FLAGS_heartbeat_interval_ms),
               absl::GetFlag(FLAGS_heartbeat_timeout_ms), absl::GetFlag(FLAGS_node_grace),
               options.infra_retries);

  // Liveness: pings, expiry of silent agents, the no-node grace.
  std::atomic<bool> ticking{true};
  std::thread ticker([&head, &ticking] {
    while (ticking.load()) {
      head.Tick();
      absl::SleepFor(absl::Milliseconds(100));
    }
  });
  auto stop_ticker = [&] {
    ticking = false;
    if (ticker.joinable()) ticker.join();
  };

  dragon::v1::RunInfo info;
  info.set_run_id(run_id);
  info.set_address(address);
  info.set_pid(getpid());
  info.set_host(Hostname());
  info.set_started_us(NowMicros());
  info.set_run_dir(run_dir);
  info.set_head_version(kVersion);
  info.set_protocol_version(kProtocolVersion);
  info.set_log_file(run_dir + "/dragond.log");
  if (!token.empty()) info.set_token_file(token_path);
  info.set_tls_ca(absl::GetFlag(FLAGS_tls_ca));
  const std::string home = dragon::common::DragonHome();
  if (auto st = WriteRunInfo(info); !st.ok()) {
    stop_ticker();
    server->Shutdown();
    return fail(st);
  }
  if (!absl::GetFlag(FLAGS_no_current)) {
    if (auto st = MakeDirs(home); !st.ok()) spdlog::warn("{}", std::string(st.message()));
    else if (auto st2 = UpdateCurrentLink(home, run_dir); !st2.ok()) spdlog::warn("{}", std::string(st2.message()));
  }

  std::unique_ptr<Launcher> launcher;
  if (local_agent) {
    LocalLauncherOptions lopts;
    lopts.node_id = Hostname();
    lopts.max_restarts = absl::GetFlag(FLAGS_agent_restarts);
    lopts.report_problem = [&head](const std::string& problem) { head.NoteLaunchProblem(problem); };
    launcher = std::make_unique<LocalLauncher>(lopts);
    AgentLaunchSpec spec;
    spec.agent_binary = agent_binary;
    // Listening on every interface, the local agent dials loopback; over TLS it dials the
    // advertised HOST:PORT instead, a name the head's certificate names (it is the address
    // clients verify too), or verification fails and the agent never registers.
    spec.head_address =
        tls ? address : absl::StrCat(dial_host == host ? host : "127.0.0.1", ":", selected_port);
    spec.run_dir = run_dir;
    spec.python = absl::GetFlag(FLAGS_python);
    spec.workers_per_node = absl::GetFlag(FLAGS_workers);
    spec.log_level = absl::GetFlag(FLAGS_log_level);
    spec.token = token;
    spec.tls_ca = absl::GetFlag(FLAGS_tls_ca);
    Launcher* l = launcher.get();
    head.SetNodeLossObserver([l](const NodeLoss& loss) {
      l->OnAgentLost(AgentLoss{loss.node_id, loss.pid, loss.reason});
    });
    if (auto st = launcher->Launch(spec); !st.ok()) {
      stop_ticker();
      server->Shutdown();
      RemoveRunInfo(home, run_dir);
      return fail(st);
    }
    head.ExpectNodes();
  }

  const std::string ready = absl::StrCat("dragond: head listening on ", address, " (run dir ", run_dir, ")");
  if (ready_fd >= 0) {
    report(absl::StrCat("OK ", ready));
  } else {
    std::cout << ready << std::endl;
  }

  const std::string why = shutdown.Wait();
  spdlog::info("shutting down: {}", why);
  head.BeginShutdown(why);
  if (launcher != nullptr) {
    // Stops restarting at once, waits for the agents told to leave, then kills what is left.
    launcher->Stop(absl::Seconds(10));
  }
  if (!head.WaitForAgentsGone(absl::Seconds(launcher != nullptr ? 2 : 10))) {
    spdlog::warn("agents did not disconnect in time");
  }
  stop_ticker();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  RemoveRunInfo(home, run_dir);
  // The token of a stopped head opens nothing; it is not left lying around.
  if (!token.empty()) unlink(token_path.c_str());
  spdlog::info("dragond stopped");
  spdlog::shutdown();
  return 0;
}

int Start() {
  if (auto st = CheckStartFlags(); !st.ok()) {
    std::cerr << "dragond: " << st.message() << std::endl;
    return 2;
  }
  const std::string run_id = NewRunId();
  std::string run_dir = absl::GetFlag(FLAGS_run_dir);
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

  if (absl::GetFlag(FLAGS_foreground)) {
    if (auto st = SetUpLogging(log_file, absl::GetFlag(FLAGS_log_level), true); !st.ok()) {
      std::cerr << "dragond: " << st.message() << std::endl;
      return 1;
    }
    return Serve(run_dir, run_id, -1);
  }

  return Daemonize(log_file, absl::GetFlag(FLAGS_log_level),
                   [&](int ready_fd) { return Serve(run_dir, run_id, ready_fd); });
}

}  // namespace
}  // namespace dragon::daemon

int main(int argc, char** argv) {
  // Debian's Abseil is built with lock-order (deadlock) tracking on, and
  // gRPC's own mutexes are absl::Mutex: every lock paid for a graph lookup.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::SetProgramUsageMessage(
      "the head daemon of the Dragon task service.\n\n"
      "Usage:\n"
      "  dragond start [--foreground] [--host H] [--port P] [--workers N] [--run-dir D] ...\n"
      "  dragond stop  [--head HOST:PORT | --run-dir D] [--timeout S]\n\n"
      "start: runs the head and one agent on this node; prints the address and writes\n"
      "<run dir>/head.json ($DRAGON_HOME/current points at the newest run).\n"
      "stop: asks the head found via --head, $DRAGON_HEAD, --run-dir or $DRAGON_HOME/current\n"
      "to stop its agents and exit, and waits for it.\n\n"
      "Run 'dragond --help' for every flag.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "daemon/main.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  std::vector<std::string> storage;
  std::vector<char*> args = dragon::common::UnderscoreFlagNames(argc, argv, &storage);
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() != 2) {
    std::cerr << "dragond: expected one command, 'start' or 'stop' (see dragond --help)" << std::endl;
    return 2;
  }
  const std::string command = positional[1];
  if (command == "start") return dragon::daemon::Start();
  if (command == "stop") {
    dragon::daemon::StopOptions stop;
    stop.locate.explicit_address = absl::GetFlag(FLAGS_head);
    stop.locate.run_dir = absl::GetFlag(FLAGS_run_dir);
    stop.locate.token_file = absl::GetFlag(FLAGS_token_file);
    stop.locate.tls_ca = absl::GetFlag(FLAGS_tls_ca);
    stop.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout));
    return dragon::daemon::Stop(stop);
  }
  std::cerr << "dragond: unknown command '" << command << "' (use 'start' or 'stop'; see dragond --help)"
            << std::endl;
  return 2;
}
