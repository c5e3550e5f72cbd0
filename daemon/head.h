// The head's state machine: task table, scheduler, client sessions and
// agents, behind one lock. It knows nothing of gRPC: streams hand it decoded
// messages and drain what it pushes into their outboxes, which keeps the
// whole scheduling path unit-testable.
#ifndef DRAGON_DAEMON_HEAD_H_
#define DRAGON_DAEMON_HEAD_H_

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/outbox.h"
#include "daemon/scheduler.h"
#include "daemon/task_table.h"
#include "proto/agent.pb.h"
#include "proto/head.pb.h"

namespace dragon::daemon {

inline constexpr uint32_t kProtocolVersion = dragon::v1::PROTOCOL_VERSION_CURRENT;

struct HeadOptions {
  std::string run_id;
  std::string version;
  uint64_t max_payload_bytes = 256ull << 20;
  int prefetch_per_worker = 1;      // minimum, and the start for a new agent
  int max_prefetch_per_worker = 1;  // adaptive up to this for short tasks
  uint32_t heartbeat_interval_ms = 2000;
  // Finished tasks kept for GetTask/ListTasks; kKeepAllFinished keeps all.
  int64_t keep_finished = kDefaultKeepFinished;
};

using SessionOutbox = Outbox<dragon::v1::HeadMessage>;
using AgentOutbox = Outbox<dragon::v1::HeadToAgent>;

int64_t NowMicros();

class Head {
 public:
  explicit Head(HeadOptions options);

  // --- client sessions -----------------------------------------------------
  absl::StatusOr<dragon::v1::Welcome> OpenSession(const dragon::v1::Hello& hello,
                                                  std::shared_ptr<SessionOutbox> outbox,
                                                  const std::string& peer);
  // Takes the payloads out of `batch`.
  void Submit(SessionId session, dragon::v1::SubmitBatch* batch);
  // The client went away: its unfinished tasks are cancelled.
  void CloseSession(SessionId session, const std::string& why);

  // --- agents ----------------------------------------------------------------
  absl::StatusOr<AgentIndex> RegisterAgent(const dragon::v1::Register& reg,
                                           std::shared_ptr<AgentOutbox> outbox,
                                           const std::string& peer);
  void Heartbeat(AgentIndex agent, const dragon::v1::Heartbeat& beat);
  // Takes the result data out of `update`.
  void ApplyUpdate(AgentIndex agent, dragon::v1::AgentUpdate* update);
  // The agent's stream ended: tasks it had not started go back to the queue,
  // tasks it was running fail with an error naming the node.
  void AgentLost(AgentIndex agent, const std::string& why);

  // --- control ---------------------------------------------------------------
  // Cancels a task; for a task on an agent, waits up to `wait` for the agent
  // to confirm so the reply can say CANCELLED.
  absl::StatusOr<dragon::v1::CancelReply> Cancel(TaskId task, const std::string& who,
                                                 absl::Duration wait);
  absl::StatusOr<dragon::v1::TaskInfo> GetTask(TaskId task) const;
  dragon::v1::ListTasksReply ListTasks(const dragon::v1::ListTasksRequest& request) const;
  dragon::v1::ListNodesReply ListNodes() const;
  void FillStatus(dragon::v1::StatusReply* reply) const;

  // Tells every agent to stop and closes every session.
  void BeginShutdown(const std::string& reason);
  // True once no agent is connected any more (or `timeout` passed: false).
  bool WaitForAgentsGone(absl::Duration timeout);

 private:
  struct Session {
    std::string cwd;
    std::string client;
    std::string peer;
    std::shared_ptr<SessionOutbox> outbox;
  };
  struct Agent {
    dragon::v1::Register info;
    std::string peer;
    bool connected = true;
    uint64_t tasks_done = 0;
    int64_t connected_us = 0;
    int64_t last_heartbeat_us = 0;
    std::shared_ptr<AgentOutbox> outbox;
    std::unordered_set<TaskId> tasks;  // assigned and not yet ended
  };
  using ResultsBySession = std::map<SessionId, dragon::v1::HeadMessage>;

  // All below run with mu_ held.
  void DispatchLocked();
  void FinishLocked(Task* task, dragon::v1::TaskState state, dragon::v1::Outcome outcome,
                    std::string error, std::string data, int64_t now,
                    ResultsBySession* results);
  void SendResultsLocked(ResultsBySession* results);
  const std::string& NodeNameLocked(AgentIndex agent) const;
  // Drops the oldest finished tasks past --keep-finished. Call only where no
  // Task pointer is held, and not while a Cancel waits on its task.
  void ForgetOldFinishedLocked();
  // NotFound for an id the table cannot return, saying whether it was
  // forgotten or never existed.
  absl::Status TaskNotFoundLocked(TaskId id) const;

  const HeadOptions options_;
  const int64_t started_us_;
  mutable std::mutex mu_;
  std::condition_variable task_ended_cv_;  // wakes Cancel() waiters
  std::condition_variable agents_cv_;      // wakes WaitForAgentsGone()
  TaskTable table_;
  Scheduler scheduler_;
  std::map<SessionId, Session> sessions_;
  SessionId next_session_ = 1;
  std::vector<Agent> agents_;  // indexed by AgentIndex; lost agents stay for `nodes`
  bool shutting_down_ = false;
  // Cancel calls waiting (lock released) on a task they hold: forgetting is
  // put off meanwhile so that their task cannot vanish under them.
  int cancel_waiters_ = 0;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_HEAD_H_
