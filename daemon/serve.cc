#include "daemon/serve.h"

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/grant_files.h"
#include "common/head_locator.h"
#include "common/host.h"
#include "common/shm_pool.h"
#include "common/token.h"
#include "common/transport.h"
#include "daemon/agent_startup.h"
#include "daemon/agent_stream.h"
#include "daemon/completion_loop.h"
#include "daemon/head.h"
#include "daemon/launchers/launcher_factory.h"
#include "daemon/listen_address.h"
#include "daemon/run_dir.h"
#include "daemon/services.h"
#include "daemon/shutdown_signal.h"
#include "grpcpp/grpcpp.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {
namespace {


// `text` on one line: trailing whitespace dropped, each line break (with the
// blanks around it) replaced by "; ".
std::string OneLine(const std::string& text) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (!line.empty()) lines.emplace_back(line);
  }
  return absl::StrJoin(lines, "; ");
}

// Writes lines for the process that daemonized us (or the terminal).
class Reporter {
 public:
  Reporter(int ready_fd, bool foreground) : fd_(ready_fd), foreground_(foreground) {}
  void Progress(const std::string& text) {
    if (fd_ >= 0) {
      Write(absl::StrCat("PROGRESS ", text));
    } else {
      std::cerr << "dragond: " << text << std::endl;
    }
  }
  void Ready(const std::string& text) {
    if (fd_ >= 0) {
      Write(absl::StrCat("OK ", text));
      Close();
    } else {
      std::cout << text << std::endl;
    }
  }
  int Fail(const absl::Status& st) {
    spdlog::error("{}", std::string(st.message()));
    if (fd_ >= 0) {
      Write(absl::StrCat("ERROR ", st.message()));
      Close();
    } else if (foreground_) {
      std::cerr << "dragond: " << st.message() << std::endl;
    }
    return 1;
  }

 private:
  // The parent reads one line per message (daemonize.cc): a message holding
  // newlines (an ssh log's tail in a node's failure) lost everything after
  // the first one there, other nodes' failures and the hint included.
  void Write(const std::string& line) {
    std::string text = OneLine(line) + "\n";
    (void)!write(fd_, text.data(), text.size());
  }
  void Close() {
    close(fd_);
    fd_ = -1;
  }
  int fd_;
  bool foreground_;
};

// Why dragond was told to stop, for a launcher still waiting in Launch (a
// batch job pending): a thread waits on the ShutdownSignal and keeps the
// reason; the guard makes sure that thread ends before Serve returns.
class StopWatch {
 public:
  explicit StopWatch(ShutdownSignal* shutdown) : shutdown_(shutdown) {
    thread_ = std::thread([this] {
      std::string why = shutdown_->Wait();
      std::lock_guard<std::mutex> lock(mu_);
      why_ = why;
    });
  }
  ~StopWatch() {
    shutdown_->Request("dragond start did not complete");
    thread_.join();
  }
  std::string why() {
    std::lock_guard<std::mutex> lock(mu_);
    return why_;
  }

 private:
  ShutdownSignal* shutdown_;
  std::mutex mu_;
  std::string why_;
  std::thread thread_;
};


std::vector<std::pair<std::string, std::string>> ForwardedEnv(const std::string& names) {
  std::vector<std::pair<std::string, std::string>> env;
  for (absl::string_view name : absl::StrSplit(names, ',', absl::SkipEmpty())) {
    const std::string key(name);
    if (const char* value = getenv(key.c_str()); value != nullptr) env.emplace_back(key, value);
  }
  return env;
}

}  // namespace

int Serve(const StartConfig& config, const std::string& run_dir, const std::string& run_id,
          int ready_fd) {
  Reporter reporter(ready_fd, config.foreground);
  std::string written_token_file;  // removed again if the start fails
  auto fail = [&](const absl::Status& st) {
    if (!written_token_file.empty()) unlink(written_token_file.c_str());
    return reporter.Fail(st);
  };

  ShutdownSignal shutdown;
  shutdown.WatchSignals();
  if (config.exit_with_parent) shutdown.WatchParent();

  absl::StatusOr<std::unique_ptr<Launcher>> made =
      MakeLauncher(config.ResolvedLauncher(), ProcessEnv());
  if (!made.ok()) return fail(made.status());
  std::unique_ptr<Launcher> launcher = *std::move(made);
  const std::string launcher_name = launcher ? launcher->name() : "none";
  const bool remote_agents = launcher != nullptr && launcher_name != "local";

  std::string agent_binary =
      config.agent_binary.empty() ? common::SelfDir() + "/dragon-agent" : config.agent_binary;
  if (launcher != nullptr && access(agent_binary.c_str(), X_OK) != 0) {
    return fail(absl::NotFoundError(
        absl::StrCat("cannot find dragon-agent at ", agent_binary,
                     " (it is installed next to dragond; or pass --agent-binary)")));
  }

  // The run's secret, in the 0700 run directory: clients on this node find
  // it there, agents get it through their environment.
  std::string token;
  const std::string token_path = absl::StrCat(run_dir, "/", common::kTokenFileName);
  if (config.auth == "token") {
    absl::StatusOr<std::string> new_token = common::NewToken();
    if (!new_token.ok()) return fail(new_token.status());
    token = *std::move(new_token);
    if (auto st = common::WriteTokenFile(token_path, token); !st.ok()) return fail(st);
    written_token_file = token_path;
  } else {
    unlink(token_path.c_str());
    spdlog::warn("authentication is off (--auth none): anyone who reaches this head's port can "
                 "submit tasks, cancel them and stop the head");
  }
  const bool tls = !config.tls_cert.empty();

  HeadOptions options;
  options.run_id = run_id;
  options.version = kDragondVersion;
  options.max_payload_bytes = static_cast<uint64_t>(config.max_payload_mb) << 20;
  options.prefetch_per_worker = config.prefetch;
  options.max_prefetch_per_worker = config.max_prefetch;
  options.keep_finished = config.keep_finished;
  options.membership.heartbeat_interval = absl::Milliseconds(config.heartbeat_interval_ms);
  options.membership.heartbeat_timeout = absl::Milliseconds(config.heartbeat_timeout_ms);
  options.membership.no_node_grace = absl::Seconds(config.node_grace_s);
  options.infra_retries = static_cast<uint32_t>(config.infra_retries);
  options.auth = !token.empty();
  options.tls = tls;
  options.launcher = launcher_name;
  Head head(options);

  absl::StatusOr<ListenPlan> plan =
      PlanListen(config.listen, remote_agents,
                 launcher ? launcher->ListenPeers() : std::vector<std::string>{});
  if (!plan.ok()) return fail(plan.status());
  const std::string listen = absl::StrCat(plan->bind_host, ":", config.port);
  int selected_port = 0;
  grpc::ServerBuilder builder;
  common::ServerTransport transport;
  transport.tls.cert = config.tls_cert;
  transport.tls.key = config.tls_key;
  transport.max_receive_bytes = options.max_payload_bytes + common::kMessageHeadroomBytes;
  if (auto st = common::ConfigureServer(&builder, listen, transport, &selected_port); !st.ok()) {
    return fail(st);
  }
  const common::TokenCheck auth(
      token, absl::StrCat("$", common::kTokenEnv, " or the token file of the run (", token_path,
                          ", named in head.json)"));
  HeadServiceImpl head_service(
      &head, &auth, [&shutdown](const std::string& why) { shutdown.Request(why); }, "", run_dir,
      absl::Seconds(10));
  AgentServiceImpl agent_service(&head, &auth);
  builder.RegisterService(&head_service);
  builder.RegisterService(&agent_service);
  // Agents' and sessions' streams run on its thread (completion_loop.h).
  CompletionLoop stream_loop(&builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    return fail(absl::UnavailableError(absl::StrCat(
        "cannot listen on ", listen, " (address in use, or not an address of this host?)")));
  }
  stream_loop.Start();
  head_service.AcceptSessionsOn(&stream_loop);
  agent_service.AcceptOn(&stream_loop);
  const std::string address = absl::StrCat(plan->advertise_host, ":", selected_port);
  head_service.set_address(address);
  spdlog::info("dragond {} listening on {} as {} (run {}, run dir {}, launcher {}, auth {}, tls {}, "
               "heartbeat {} ms / timeout {} ms, node grace {} s, infra retries {})",
               kDragondVersion, listen, address, run_id, run_dir, launcher_name,
               token.empty() ? "none" : "token", tls ? "on" : "off", config.heartbeat_interval_ms,
               config.heartbeat_timeout_ms, config.node_grace_s, options.infra_retries);

  // Liveness: pings, expiry of silent agents, the no-node grace.
  std::atomic<bool> ticking{true};
  std::thread ticker([&head, &ticking] {
    while (ticking.load()) {
      head.Tick();
      absl::SleepFor(absl::Milliseconds(100));
    }
  });
  const std::string home = common::DragonHome();
  auto abandon = [&](const absl::Status& st) {
    // Agents that registered leave when told, as at a normal stop; without
    // this the launcher waited out its grace and then ended each one over ssh.
    head.BeginShutdown(std::string(st.message()));
    if (launcher != nullptr) launcher->Stop(absl::Seconds(2));
    ticking = false;
    ticker.join();
    stream_loop.Stop(server.get(), absl::Seconds(1));
    RemoveRunInfo(home, run_dir);
    return fail(st);
  };

  dragon::v1::RunInfo info;
  info.set_run_id(run_id);
  info.set_address(address);
  info.set_pid(getpid());
  info.set_host(common::Hostname());
  info.set_started_us(NowMicros());
  info.set_run_dir(run_dir);
  info.set_head_version(kDragondVersion);
  info.set_protocol_version(kProtocolVersion);
  info.set_log_file(run_dir + "/dragond.log");
  if (!token.empty()) info.set_token_file(token_path);
  info.set_tls_ca(config.tls_ca);
  info.set_launcher(launcher_name);
  if (auto st = WriteRunInfo(info); !st.ok()) return abandon(st);
  if (!config.no_current) {
    // Several heads may run; the one `current` named keeps running but is no
    // longer what dragonctl and `dragond stop` find by default: say so.
    const auto previous = common::ReadRunInfo(home + "/current/head.json");
    if (previous.ok() && previous->run_dir() != run_dir && common::HeadProcessAlive(*previous)) {
      reporter.Progress(absl::StrCat("note: the head of run ", previous->run_id(), " at ",
                                     previous->address(), " still runs; ", home,
                                     "/current now names this run; reach that one with --run-dir ",
                                     previous->run_dir(), " (or stop it: dragond stop --run-dir ",
                                     previous->run_dir(), ")"));
    }
    if (auto st = MakeDirs(home); !st.ok()) {
      spdlog::warn("{}", std::string(st.message()));
    } else if (auto st2 = UpdateCurrentLink(home, run_dir); !st2.ok()) {
      spdlog::warn("{}", std::string(st2.message()));
    }
  }

  StartupObserver observer(&head, [&reporter](const std::string& m) { reporter.Progress(m); });
  StopWatch stop_watch(&shutdown);
  std::string agents_text;
  if (launcher != nullptr) {
    AgentLaunchSpec spec;
    spec.agent_binary = agent_binary;
    // A local agent dials loopback when the head listens everywhere; over TLS
    // it dials the advertised name, which the head's certificate names.
    const bool everywhere = plan->bind_host == "0.0.0.0" || plan->bind_host == "::";
    spec.head_address = !remote_agents && everywhere && !tls
                            ? absl::StrCat("127.0.0.1:", selected_port)
                            : address;
    spec.run_dir = run_dir;
    spec.python = config.python;
    spec.workers_per_node = config.workers;
    spec.shm_pool_mb = config.shm_pool_mb;
    spec.log_level = config.log_level;
    spec.token = token;
    spec.tls_ca = config.tls_ca;
    if (remote_agents) spec.forwarded_env = ForwardedEnv(config.agent_env);
    spec.stop_requested = [&stop_watch] { return stop_watch.why(); };
    Launcher* l = launcher.get();
    head.SetNodeLossObserver([l](const NodeLoss& loss) {
      l->OnAgentLost(AgentLoss{loss.node_id, loss.pid, loss.reason});
    });
    const int64_t launched_us = NowMicros();
    if (auto st = launcher->Launch(spec, &observer); !st.ok()) return abandon(st);
    // Set once launched but before the start's wait: `dragonctl nodes add` works meanwhile.
    head_service.set_node_adder([&head, l, &observer, &run_dir](
                                    const dragon::v1::AddNodesRequest& request)
                                    -> absl::StatusOr<dragon::v1::AddNodesReply> {
      std::vector<std::string> hosts(request.hosts().begin(), request.hosts().end());
      const int64_t since = NowMicros();
      if (absl::Status st = l->AddNodes(hosts); !st.ok()) return st;
      StartupOutcome added =
          WaitForAgents(head, observer, hosts, since, absl::Seconds(60), nullptr);
      dragon::v1::AddNodesReply reply;
      const dragon::v1::ListNodesReply listed = head.ListNodes();
      for (const auto& node : listed.nodes()) {
        if (std::find(hosts.begin(), hosts.end(), node.node_id()) != hosts.end()) {
          *reply.add_nodes() = node;
        }
      }
      for (const auto& [node, why] : added.failed) reply.add_failed(absl::StrCat(node, ": ", why));
      for (const std::string& node : added.missing) {
        reply.add_failed(absl::StrCat(node, ": its agent did not register within 60s (see ",
                                      run_dir, "/agent-", node, ".log on that node)"));
      }
      return reply;
    });
    head.ExpectNodes();
    const std::vector<std::string> nodes = launcher->ExpectedNodes();
    const absl::Duration timeout = absl::Seconds(config.start_timeout_s);
    StartupOutcome outcome = WaitForAgents(
        head, observer, nodes, launched_us, timeout,
        [&reporter](const std::string& m) { reporter.Progress(m); });
    if (auto st = CheckStartup(outcome, config.allow_missing, timeout, run_dir); !st.ok()) {
      return abandon(st);
    }
    agents_text = absl::StrCat("; ", outcome.ready.size(), " of ", nodes.size(), " agent(s) ready (",
                               launcher_name, ": ", absl::StrJoin(outcome.ready, ", "), ")");
    // --allow-missing: say on the terminal, not only in the log, which nodes
    // the run goes on without, and why.
    if (const std::vector<std::string> without = StartupProblems(outcome, timeout, run_dir);
        !without.empty()) {
      absl::StrAppend(&agents_text, "; started without ", without.size(),
                      " node(s) (--allow-missing): ", absl::StrJoin(without, "; "));
    }
  }

  reporter.Ready(absl::StrCat("dragond: head listening on ", address, " (run dir ", run_dir, ")",
                              agents_text));

  const std::string why = shutdown.Wait();
  spdlog::info("shutting down: {}", why);
  head.BeginShutdown(why);
  if (launcher != nullptr) {
    // Stops restarting at once, waits for the agents told to leave, then ends what is left.
    launcher->Stop(absl::Seconds(10));
  }
  if (!head.WaitForAgentsGone(absl::Seconds(launcher != nullptr ? 2 : 10))) {
    spdlog::warn("agents did not disconnect in time");
  }
  ticking = false;
  ticker.join();
  stream_loop.Stop(server.get(), absl::Seconds(2));
  if (const auto now_current = RemoveRunInfo(home, run_dir)) {
    spdlog::info("{}/current now names run {} at {}, whose head still runs", home,
                 now_current->run_id(), now_current->address());
  }
  // The token of a stopped head opens nothing; it is not left lying around.
  if (!token.empty()) unlink(token_path.c_str());
  // Agents of this host killed with kill -9 could not remove their MPI grant
  // files from /dev/shm; the files of agents that are gone go now.
  if (const int swept = common::SweepStaleGrants(); swept > 0) {
    spdlog::info("removed {} grant file(s) of agents that are gone from /dev/shm", swept);
  }
  // Likewise their shared-memory pools, which an agent started again on the
  // node would have adopted: none will be now. (A live agent's, or one on
  // another machine, is not this host's to remove: RemoveIfStale checks.)
  const dragon::v1::ListNodesReply nodes = head.ListNodes();
  for (const dragon::v1::NodeInfo& node : nodes.nodes()) {
    if (!node.shm_pool_path().empty() && common::ShmPool::RemoveIfStale(node.shm_pool_path())) {
      spdlog::info("removed the shared-memory pool {} of node {}, whose agent is gone",
                   node.shm_pool_path(), node.node_id());
      // Its AgentData socket (<pool>.sock) went unserved with it.
      struct stat st {};
      if (!node.data_socket().empty() && lstat(node.data_socket().c_str(), &st) == 0 &&
          S_ISSOCK(st.st_mode) && unlink(node.data_socket().c_str()) == 0) {
        spdlog::info("removed the data socket {} of node {}", node.data_socket(), node.node_id());
      }
    }
  }
  spdlog::info("dragond stopped");
  spdlog::shutdown();
  return 0;
}

}  // namespace dragon::daemon
