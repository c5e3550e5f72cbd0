// Many simulated agents in one process, for measuring the head
// (bench/head_scale.py --agent-mode hosted, bench/HEAD_SCALE.md). Each agent
// is a real AgentService.Connect stream on its own TCP connection that
// speaks the real protocol: Register, then every TaskBatch is answered by
// one AgentUpdate with a result per task, outcome OK, EMPTY data, worker pid
// 0 and the error text agent::kSimulatedMarker, exactly what `dragon-agent
// --simulate-workers W` sends for zero-time tasks; every Ping is answered at
// once with a Heartbeat. AgentShutdown ends it.
//
// Why: 256 dragon-agent processes, each with its reader, writer, gRPC and
// logging threads, cost this 2-core machine more CPU than the head they are
// meant to measure. Here all streams run on gRPC's callback API: a handful
// of threads in one address space, whatever the number of agents.
#ifndef DRAGON_BENCH_SIM_AGENT_HOST_H_
#define DRAGON_BENCH_SIM_AGENT_HOST_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace dragon::bench {

struct SimAgentHostOptions {
  std::string head_address;         // HOST:PORT of dragond
  std::string node_prefix = "sim-"; // node ids are PREFIX000, PREFIX001, ...
  int agents = 1;
  int workers = 8;  // registered worker slots per agent
  std::string token;  // the run's token
};

class SimAgentHost {
 public:
  explicit SimAgentHost(SimAgentHostOptions options);
  ~SimAgentHost();  // Stop(), then waits for every stream to end

  // Opens every stream and waits until all are registered; an error names
  // the first agent whose stream ended first (e.g. the head refused it).
  absl::Status Start(absl::Duration timeout);
  // Blocks until every stream has ended; OK if all ended cleanly (the head
  // said AgentShutdown or closed them).
  absl::Status Wait();
  // Cancels every stream that is still open.
  void Stop();

  // Tasks answered so far, over all agents.
  uint64_t tasks_done() const;

 private:
  class Agent;
  void Registered();
  void Ended(const std::string& node, const absl::Status& status);
  void Answered(uint64_t tasks);

  SimAgentHostOptions options_;
  std::vector<std::unique_ptr<Agent>> agents_;

  mutable absl::Mutex mu_;
  int registered_ ABSL_GUARDED_BY(mu_) = 0;
  int ended_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  uint64_t tasks_done_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace dragon::bench

#endif  // DRAGON_BENCH_SIM_AGENT_HOST_H_
