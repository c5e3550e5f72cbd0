// sim_agents: many simulated agents in one process (bench/sim_agent_host.h).
//
//   sim_agents --head HOST:PORT --agents 256 [--workers 8] [--node-prefix sim-]
//
// Registers every agent, says so on stderr, then answers tasks until dragond
// tells the agents to shut down (exit 0) or a stream breaks (exit 1).
// SIGTERM/SIGINT cancel the streams (exit 0).
#include <signal.h>

#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"
#include "bench/sim_agent_host.h"
#include "common/dashed_flags.h"
#include "common/head_locator.h"

ABSL_FLAG(std::string, head, "", "HOST:PORT of dragond's AgentService (required)");
ABSL_FLAG(int, agents, 1, "number of simulated agents (streams)");
ABSL_FLAG(int, workers, 8, "worker slots each agent registers");
ABSL_FLAG(std::string, node_prefix, "sim-", "node ids are PREFIX000, PREFIX001, ...");
ABSL_FLAG(int, connect_timeout, 120, "seconds for every agent to register");
ABSL_FLAG(std::string, token_file, "",
          "file with the run's token (default: $DRAGON_TOKEN; the run's token file when "
          "neither is given and the head is found under $DRAGON_HOME)");

int main(int argc, char** argv) {
  // As in dragond and dragon-agent: no lock-order tracking on every lock.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);  // before gRPC starts threads

  absl::SetProgramUsageMessage(
      "hosts many simulated dragon agents (benchmark only; results are fake and marked)");
  std::vector<std::string> arg_storage;
  std::vector<char*> args = dragon::common::UnderscoreFlagNames(argc, argv, &arg_storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (absl::GetFlag(FLAGS_head).empty()) {
    std::cerr << "sim_agents: --head is required" << std::endl;
    return 2;
  }
  dragon::common::LocateOptions locate;
  locate.explicit_address = absl::GetFlag(FLAGS_head);
  locate.token_file = absl::GetFlag(FLAGS_token_file);
  absl::StatusOr<dragon::common::HeadLocation> location = dragon::common::LocateHead(locate);
  if (!location.ok()) {
    std::cerr << "sim_agents: " << location.status().message() << std::endl;
    return 2;
  }
  dragon::bench::SimAgentHostOptions options;
  options.head_address = location->address;
  options.token = location->token;
  options.agents = absl::GetFlag(FLAGS_agents);
  options.workers = absl::GetFlag(FLAGS_workers);
  options.node_prefix = absl::GetFlag(FLAGS_node_prefix);
  dragon::bench::SimAgentHost host(options);

  std::thread([&host, stop_signals] {
    int sig = 0;
    if (sigwait(&stop_signals, &sig) == 0) host.Stop();
  }).detach();

  if (absl::Status st = host.Start(absl::Seconds(absl::GetFlag(FLAGS_connect_timeout)));
      !st.ok()) {
    std::cerr << "sim_agents: " << st.message() << std::endl;
    host.Stop();
    return 1;
  }
  std::cerr << "sim_agents: " << options.agents << " agents registered" << std::endl;
  absl::Status st = host.Wait();
  std::cerr << "sim_agents: done, " << host.tasks_done() << " tasks answered" << std::endl;
  if (!st.ok() && st.code() != absl::StatusCode::kCancelled) {
    std::cerr << "sim_agents: " << st.message() << std::endl;
    return 1;
  }
  return 0;
}
