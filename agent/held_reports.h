// Results of tasks whose process was killed by a stop signal the agent did
// not send (SIGTERM, SIGINT, SIGHUP), held back for a moment before they are
// reported.
//
// Why: a batch system ending a job (scancel, qdel, the walltime) or a Ctrl-C
// signals every process of the job at once, the agent and its workers alike.
// The agent may reap a worker killed that way before its own signal stops it;
// reporting that task as failed (WorkerLost) would break the promise that
// tasks running when a node goes away run again elsewhere (the head's
// infrastructure retry). Holding the report a moment lets the agent's own stop
// win: then the results are dropped with the agent, and the head, seeing the
// node lost, runs the tasks again. A worker killed by such a signal while the
// agent goes on (someone's `kill` of one worker) is reported once the hold
// ends, as before.
#ifndef DRAGON_AGENT_HELD_REPORTS_H_
#define DRAGON_AGENT_HELD_REPORTS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "proto/common.pb.h"

namespace dragon::agent {

// Whether `signal` is one that stops the agent too (see above); 0 is none.
bool IsStopSignal(int signal);

// Not thread-safe: owned by PoolState (the pool thread).
class HeldReports {
 public:
  // Holds `result` until `release_at_us`.
  void Hold(v1::TaskResult result, int64_t release_at_us);
  // Takes the results whose hold ended by `now_us`, oldest first.
  std::vector<v1::TaskResult> TakeDue(int64_t now_us);
  // When the next hold ends, if any is held.
  std::optional<int64_t> NextReleaseUs() const;
  // Drops every held result (the agent is stopping) and returns their task ids.
  std::vector<uint64_t> DropAll();
  bool empty() const { return held_.empty(); }

 private:
  struct Held {
    int64_t release_at_us;
    v1::TaskResult result;
  };
  std::vector<Held> held_;  // release times ascending: every hold is equally long
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_HELD_REPORTS_H_
