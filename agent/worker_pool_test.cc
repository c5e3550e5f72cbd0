// WorkerPool's own bookkeeping without Python: the pids of its workers as
// the heartbeat reads them (WorkerPids). Its work with real workers is
// tested end to end (tests/).
#include "agent/worker_pool.h"

#include <signal.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "common/test_dir.h"

namespace dragon::agent {
namespace {

struct NullSink : TaskEventSink {
  void TaskStarted(v1::TaskStarted) override {}
  void TaskFinished(v1::TaskResult) override {}
  void Heartbeat(v1::Heartbeat) override {}
  void TasksReleased(std::vector<uint64_t>) override {}
};

TEST_CASE("WorkerPids: the started workers' pids, none after Shutdown", "[worker_pool]") {
  common::TestDir dir("/tmp/dragon-worker-pool-test-");
  WorkerPoolOptions o;
  o.node_id = "n1";
  o.run_dir = dir.path;
  o.run_id = "worker-pool-test";
  o.workers = 2;
  o.cores = 2;
  // Never says READY: started, not ready, which is all WorkerPids needs.
  o.worker_argv = {"/bin/sleep", "60"};
  o.term_grace_ms = 1000;
  NullSink sink;
  WorkerPool pool(o, &sink);
  CHECK(pool.WorkerPids().empty());
  REQUIRE(pool.Start().ok());
  std::vector<pid_t> pids = pool.WorkerPids();
  REQUIRE(pids.size() == 2);
  for (pid_t pid : pids) CHECK(kill(pid, 0) == 0);
  pool.Shutdown();
  CHECK(pool.WorkerPids().empty());
}

}  // namespace
}  // namespace dragon::agent
