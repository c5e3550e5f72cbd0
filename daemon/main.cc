// dragond: the head daemon of the Dragon task service.
//   dragond start [flags]   start a head (and its agents) for this allocation
//   dragond stop  [flags]   stop a running head cleanly
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
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
#include "daemon/head.h"
#include "daemon/local_launcher.h"
#include "daemon/run_dir.h"
#include "daemon/services.h"
#include "daemon/shutdown_signal.h"
#include "grpcpp/grpcpp.h"
#include "proto/head.grpc.pb.h"
#include "spdlog/sinks/basic_file_sink.h"
#include "spdlog/sinks/stdout_color_sinks.h"
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
ABSL_FLAG(int, max_payload_mb, 256, "start: largest task payload accepted, in MiB");
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

// Gone, or a zombie waiting for whoever adopted it to reap it.
bool ProcessGone(pid_t pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  FILE* f = fopen(absl::StrCat("/proc/", pid, "/stat").c_str(), "r");
  if (f == nullptr) return true;
  char buf[512] = {0};
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  std::string stat(buf, n);
  size_t paren = stat.rfind(") ");
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z';
}

std::string Hostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

absl::StatusOr<std::string> AbsolutePath(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) == nullptr) {
    return absl::InternalError(absl::StrCat("getcwd failed: ", strerror(errno)));
  }
  return absl::StrCat(cwd, "/", path);
}

absl::Status SetUpLogging(const std::string& log_file, bool to_stderr) {
  try {
    std::vector<spdlog::sink_ptr> sinks;
    sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file));
    if (to_stderr) {
      auto err = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
      err->set_level(spdlog::level::warn);
      sinks.push_back(err);
    }
    auto logger = std::make_shared<spdlog::logger>("dragond", sinks.begin(), sinks.end());
    auto level = spdlog::level::from_str(absl::GetFlag(FLAGS_log_level));
    if (level == spdlog::level::off && absl::GetFlag(FLAGS_log_level) != "off") {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown --log-level '", absl::GetFlag(FLAGS_log_level),
                       "' (use trace, debug, info, warn, error)"));
    }
    logger->set_level(level);
    logger->flush_on(spdlog::level::info);
    spdlog::set_default_logger(logger);
  } catch (const spdlog::spdlog_ex& e) {
    return absl::InternalError(absl::StrCat("cannot open log ", log_file, ": ", e.what()));
  }
  return absl::OkStatus();
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
  auto fail = [&](const absl::Status& st) {
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

  HeadOptions options;
  options.run_id = run_id;
  options.version = kVersion;
  options.max_payload_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_max_payload_mb)) << 20;
  options.prefetch_per_worker = absl::GetFlag(FLAGS_prefetch);
  options.max_prefetch_per_worker = absl::GetFlag(FLAGS_max_prefetch);
  options.keep_finished = absl::GetFlag(FLAGS_keep_finished);
  Head head(options);

  const std::string host = absl::GetFlag(FLAGS_host);
  const std::string listen = absl::StrCat(host, ":", absl::GetFlag(FLAGS_port));
  int selected_port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &selected_port);
  const int max_message = static_cast<int>(options.max_payload_bytes + (64u << 20));
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  // Notice peers that vanish without closing their connection (a node that
  // lost power) instead of waiting for TCP to time out.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // gRPC sets SO_REUSEPORT by default: a second head on a busy port would
  // silently share it with the first. Fail loudly instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);

  const std::string dial_host = (host == "0.0.0.0" || host == "::" || host == "[::]") ? Hostname() : host;
  std::string address;  // set once listening; read by the service
  HeadServiceImpl head_service(
      &head, [&shutdown](const std::string& why) { shutdown.Request(why); },
      "", run_dir, absl::Seconds(10));
  AgentServiceImpl agent_service(&head);
  builder.RegisterService(&head_service);
  builder.RegisterService(&agent_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    return fail(absl::UnavailableError(absl::StrCat(
        "cannot listen on ", listen, " (address in use, or not an address of this host?)")));
  }
  address = absl::StrCat(dial_host, ":", selected_port);
  head_service.set_address(address);
  spdlog::info("dragond {} listening on {} (run {}, run dir {})", kVersion, address, run_id, run_dir);

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
  const std::string home = dragon::common::DragonHome();
  if (auto st = WriteRunInfo(info); !st.ok()) {
    server->Shutdown();
    return fail(st);
  }
  if (!absl::GetFlag(FLAGS_no_current)) {
    if (auto st = MakeDirs(home); !st.ok()) spdlog::warn("{}", std::string(st.message()));
    else if (auto st2 = UpdateCurrentLink(home, run_dir); !st2.ok()) spdlog::warn("{}", std::string(st2.message()));
  }

  std::unique_ptr<Launcher> launcher;
  if (local_agent) {
    launcher = std::make_unique<LocalLauncher>(Hostname());
    AgentLaunchSpec spec;
    spec.agent_binary = agent_binary;
    spec.head_address = absl::StrCat(dial_host == host ? host : "127.0.0.1", ":", selected_port);
    spec.run_dir = run_dir;
    spec.python = absl::GetFlag(FLAGS_python);
    spec.workers_per_node = absl::GetFlag(FLAGS_workers);
    spec.log_level = absl::GetFlag(FLAGS_log_level);
    if (auto st = launcher->Launch(spec); !st.ok()) {
      server->Shutdown();
      RemoveRunInfo(home, run_dir);
      return fail(st);
    }
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
    if (!head.WaitForAgentsGone(absl::Seconds(10))) {
      spdlog::warn("agents did not disconnect within 10s");
    }
    launcher->Stop(absl::Seconds(5));
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  RemoveRunInfo(home, run_dir);
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
    if (auto st = SetUpLogging(log_file, true); !st.ok()) {
      std::cerr << "dragond: " << st.message() << std::endl;
      return 1;
    }
    return Serve(run_dir, run_id, -1);
  }

  // Daemonize: the parent returns once the child listens (or says why not),
  // so that `dragond start && dragonctl status` works in a job script.
  int pipe_fds[2];
  // Close-on-exec: agents started by the daemon must not hold the write end,
  // or the waiting parent would never see it close.
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    std::cerr << "dragond: pipe failed: " << strerror(errno) << std::endl;
    return 1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    std::cerr << "dragond: fork failed: " << strerror(errno) << std::endl;
    return 1;
  }
  if (pid > 0) {
    close(pipe_fds[1]);
    std::string line;
    char buf[512];
    ssize_t n;
    while (line.find('\n') == std::string::npos &&
           (n = read(pipe_fds[0], buf, sizeof(buf))) > 0) {
      line.append(buf, n);
    }
    close(pipe_fds[0]);
    while (!line.empty() && line.back() == '\n') line.pop_back();
    if (absl::StartsWith(line, "OK ")) {
      std::cout << line.substr(3) << std::endl;
      return 0;
    }
    if (absl::StartsWith(line, "ERROR ")) {
      std::cerr << "dragond: " << line.substr(6) << std::endl;
    } else {
      std::cerr << "dragond: the daemon exited before it was ready; see " << log_file << std::endl;
    }
    return 1;
  }
  close(pipe_fds[0]);
  setsid();
  int null_fd = open("/dev/null", O_RDWR);
  int log_fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  dup2(null_fd, 0);
  dup2(log_fd >= 0 ? log_fd : null_fd, 1);
  dup2(log_fd >= 0 ? log_fd : null_fd, 2);
  if (auto st = SetUpLogging(log_file, false); !st.ok()) {
    std::string text = absl::StrCat("ERROR ", st.message(), "\n");
    (void)!write(pipe_fds[1], text.data(), text.size());
    return 1;
  }
  return Serve(run_dir, run_id, pipe_fds[1]);
}

int Stop() {
  dragon::common::LocateOptions options;
  options.explicit_address = absl::GetFlag(FLAGS_head);
  options.run_dir = absl::GetFlag(FLAGS_run_dir);
  auto location = dragon::common::LocateHead(options);
  if (!location.ok()) {
    std::cerr << "dragond: " << location.status().message() << std::endl;
    return 1;
  }
  auto channel = grpc::CreateChannel(location->address, grpc::InsecureChannelCredentials());
  auto stub = dragon::v1::HeadService::NewStub(channel);
  const int timeout = absl::GetFlag(FLAGS_timeout);
  // Learn the pid first so we can wait for the process itself to be gone.
  dragon::v1::StatusReply status;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status st = stub->Status(&ctx, dragon::v1::StatusRequest(), &status);
    if (!st.ok()) {
      std::cerr << "dragond: cannot reach dragond at " << location->address << " (from "
                << location->source << "): " << st.error_message() << std::endl;
      return 1;
    }
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    dragon::v1::ShutdownReply reply;
    grpc::Status st = stub->Shutdown(&ctx, dragon::v1::ShutdownRequest(), &reply);
    if (!st.ok()) {
      std::cerr << "dragond: Shutdown of " << location->address
                << " failed: " << st.error_message() << std::endl;
      return 1;
    }
  }
  // Drop our connection so the head's server has nothing left to drain.
  stub.reset();
  channel.reset();
  const pid_t pid = status.pid();
  const bool same_host = status.address().empty() || Hostname() == status.address().substr(0, status.address().rfind(':')) ||
                         absl::StartsWith(status.address(), "127.") ||
                         absl::StartsWith(status.address(), "localhost");
  absl::Time deadline = absl::Now() + absl::Seconds(timeout);
  while (absl::Now() < deadline) {
    bool gone = same_host && ProcessGone(pid);
    if (!same_host) {
      auto probe = dragon::v1::HeadService::NewStub(
          grpc::CreateChannel(location->address, grpc::InsecureChannelCredentials()));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      dragon::v1::StatusReply ignored;
      gone = !probe->Status(&ctx, dragon::v1::StatusRequest(), &ignored).ok();
    }
    if (gone) {
      std::cout << "dragond: stopped head " << status.run_id() << " at " << location->address
                << std::endl;
      return 0;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  std::cerr << "dragond: head " << location->address << " (pid " << pid
            << ") did not exit within " << timeout << "s; see " << status.run_dir()
            << "/dragond.log" << std::endl;
  return 1;
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
  if (command == "stop") return dragon::daemon::Stop();
  std::cerr << "dragond: unknown command '" << command << "' (use 'start' or 'stop'; see dragond --help)"
            << std::endl;
  return 2;
}
