// The head's state machine: task table, scheduler, client sessions and
// agents, behind one lock. It knows nothing of gRPC: streams hand it decoded
// messages and drain what it pushes into their outboxes, which keeps the
// whole scheduling path unit-testable. Node liveness is the Membership's:
// the Head asks it, and Tick() (called periodically by dragond, by hand in
// tests with a fake clock) sends the pings and acts on its verdicts.
//
// The implementation is split by responsibility: head.cc (sessions, tasks,
// dispatch, cancel), head_agents.cc (agents, liveness, drain, lost work),
// head_queries.cc (what dragonctl reads).
#ifndef DRAGON_DAEMON_HEAD_H_
#define DRAGON_DAEMON_HEAD_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "daemon/held_accepted.h"
#include "daemon/membership.h"
#include "daemon/outbox.h"
#include "daemon/scheduler.h"
#include "daemon/task_io.h"
#include "daemon/task_table.h"
#include "proto/agent.pb.h"
#include "proto/head.pb.h"

namespace dragon::daemon {

inline constexpr uint32_t kProtocolVersion = dragon::v1::PROTOCOL_VERSION_CURRENT;
// More runs of one task than this would only hide a broken workflow.
inline constexpr uint32_t kMaxInfraRetries = 100;

struct HeadOptions {
  std::string run_id;
  std::string version;
  uint64_t max_payload_bytes = 256ull << 20;
  int prefetch_per_worker = 1;      // minimum, and the start for a new agent
  int max_prefetch_per_worker = 1;  // adaptive up to this for short tasks
  // Finished tasks kept for GetTask/ListTasks; kKeepAllFinished keeps all.
  int64_t keep_finished = kDefaultKeepFinished;
  MembershipOptions membership;
  // Runs of a task whose node is lost while it runs, elsewhere, before it
  // fails with FAILURE_NODE_LOST; a session may ask for another number.
  uint32_t infra_retries = 1;
  // For StatusReply only: how clients must connect, how agents are started.
  bool auth = false;
  bool tls = false;
  std::string launcher;
  // The clock of membership deadlines; nullptr = the system clock.
  const common::Clock* clock = nullptr;
};

using SessionOutbox = Outbox<dragon::v1::HeadMessage>;
using AgentOutbox = Outbox<dragon::v1::HeadToAgent>;

int64_t NowMicros();

// What the Head needs of an agent's stream besides its outbox.
struct AgentLink {
  std::shared_ptr<AgentOutbox> outbox;
  // Ends the stream from the head's side (a lost or fenced incarnation); may
  // be called with the Head's lock held, so it must not call into the Head.
  std::function<void()> drop;
  std::string peer;
};

struct AgentRegistration {
  AgentIndex index = kNoAgent;
  uint64_t incarnation = 0;
};

// Told to the launcher, with the Head's lock held (so it must only record
// it and return): a node's incarnation was lost (not left on request).
struct NodeLoss {
  std::string node_id;
  uint64_t incarnation = 0;
  int pid = 0;
  std::string host;
  std::string reason;
};

class Head {
 public:
  explicit Head(HeadOptions options);

  // --- client sessions -----------------------------------------------------
  // A protocol version mismatch is FailedPrecondition; the caller then sends
  // a Welcome holding only this head's protocol_version before ending the
  // stream, so that the client reads the mismatch from a field.
  absl::StatusOr<dragon::v1::Welcome> OpenSession(const dragon::v1::Hello& hello,
                                                  std::shared_ptr<SessionOutbox> outbox,
                                                  const std::string& peer);
  // Takes the payloads out of `batch`.
  void Submit(SessionId session, dragon::v1::SubmitBatch* batch);
  // The client went away: its unfinished tasks are cancelled (and its data
  // peer forgotten).
  void CloseSession(SessionId session, const std::string& why);
  // A client's data plane (a workflow on a host without an agent) for its
  // open session: listed in ListNodes' data_peers as "client-<session id>"
  // until the session closes; published again, it replaces the last one.
  // NotFound naming the session when it is not open; InvalidArgument when
  // the peer has no UCX address or pool region.
  absl::StatusOr<dragon::v1::DataPeer> PublishDataPeer(SessionId session,
                                                       dragon::v1::DataPeer peer);

  // --- agents ----------------------------------------------------------------
  // Admits an agent (Membership decides on incarnations and fencing) and
  // pushes Registered and a first Ping. On a protocol mismatch it pushes a
  // Registered holding only this head's version and fails.
  absl::StatusOr<AgentRegistration> RegisterAgent(const dragon::v1::Register& reg,
                                                  AgentLink link);
  // The answer to a Ping.
  void Heartbeat(AgentIndex agent, const dragon::v1::Heartbeat& beat);
  // Takes the result data out of `update`. Ignored from a lost incarnation.
  void ApplyUpdate(AgentIndex agent, dragon::v1::AgentUpdate* update);
  // The agent's stream ended. Unless the head asked it to go, the node is
  // lost: tasks it had not started go back to the queue, tasks it was
  // running are re-run elsewhere (infra retries) or fail with NODE_LOST.
  void AgentLost(AgentIndex agent, const std::string& why);

  // Pings members that are due, declares silent ones lost (dropping their
  // streams, re-placing their work), drains nodes whose allocation is about
  // to end (their drain window has begun) and fails queued work once no node
  // has been left for the grace period. Call every ~100 ms.
  void Tick();

  // Stops (drain) or resumes placement on a node; on drain, tasks sent to it
  // and not started are asked back.
  absl::StatusOr<dragon::v1::NodeInfo> DrainNode(const std::string& node_id, bool drain);

  // Drains the node, then tells its agent to leave once it runs nothing;
  // it is then gone (not lost). NotFound / FailedPrecondition as DrainNode.
  absl::StatusOr<dragon::v1::NodeInfo> RemoveNode(const std::string& node_id);

  // Called (lock held: record and return) for each node loss.
  void SetNodeLossObserver(std::function<void(const NodeLoss&)> observer);
  // The launcher could not (re)start an agent: added to the errors of work
  // that fails for want of nodes.
  void NoteLaunchProblem(const std::string& problem);
  // The launcher started agents: queued work must not wait for them forever.
  void ExpectNodes();

  // --- control ---------------------------------------------------------------
  // Cancels a task; for a task on an agent, waits up to `wait` for the agent
  // to confirm so the reply can say CANCELLED.
  absl::StatusOr<dragon::v1::CancelReply> Cancel(TaskId task, const std::string& who,
                                                 absl::Duration wait);
  absl::StatusOr<dragon::v1::TaskInfo> GetTask(TaskId task) const;
  dragon::v1::ListTasksReply ListTasks(const dragon::v1::ListTasksRequest& request) const;
  // One row per node: its latest incarnation.
  dragon::v1::ListNodesReply ListNodes() const;
  void FillStatus(dragon::v1::StatusReply* reply) const;

  // --- TaskIO and TaskLogs (head_task_io.cc) --------------------------------
  // Attaches a client's TaskIO stream to the MPI job of `open.task_id()`:
  // frames for the client go to `client`, which the head ends (with the
  // status the stream finishes with) after the end of rank 0's stdout, or
  // when the task ended without running, its node was lost, another client
  // attached, or the client broke the window. A second attach replaces the
  // first. NotFound (no such task), FailedPrecondition (not an MPI job, or it
  // ended before it ran), Unavailable (its node is lost).
  absl::StatusOr<uint64_t> OpenTaskIO(const dragon::v1::TaskIOFrame& open,
                                      std::shared_ptr<TaskIOClient> client, const std::string& peer);
  // Stdin data, its end, and acks of stdout from the client.
  void TaskIOFromClient(uint64_t channel, dragon::v1::TaskIOFrame frame);
  // The client went away (its stream ended or broke): the agent stops sending.
  void CloseTaskIO(uint64_t channel, const std::string& why);
  // Asks the agent that ran the task for its output and waits up to `wait`.
  absl::StatusOr<dragon::v1::TaskLogsReply> TaskLogs(const dragon::v1::TaskLogsRequest& request,
                                                     absl::Duration wait);

  // Tells every agent to stop and closes every session.
  void BeginShutdown(const std::string& reason);
  // True once no agent is connected any more (or `timeout` passed: false).
  bool WaitForAgentsGone(absl::Duration timeout);

 private:
  struct Session {
    std::string cwd;
    std::string client;
    std::string peer;
    uint32_t infra_retries = 0;
    std::shared_ptr<SessionOutbox> outbox;
    std::optional<dragon::v1::DataPeer> data_peer;  // PublishDataPeer
    // Hello.accepted_with_results: Python tasks' ids wait in `held` for the
    // next message to this session (results, Accepted, or Tick's flush).
    bool hold_accepted = false;
    HeldAccepted held;
  };
  struct Agent {
    dragon::v1::Register info;
    AgentLink link;
    uint64_t incarnation = 0;
    uint64_t tasks_done = 0;
    int64_t connected_us = 0;
    int64_t last_heartbeat_us = 0;  // wall clock, for people
    uint32_t ready_workers = 0;     // as of the last heartbeat
    // The host's load as the last heartbeat measured it (live telemetry);
    // nullopt until a heartbeat carries one (older agents never do).
    std::optional<dragon::v1::NodeLoad> load;
    bool ended = false;             // EndAgentLocked done: stream dropped, work taken back
    bool removing = false;          // RemoveNode: leaves once it runs nothing
    std::unordered_set<TaskId> tasks;  // assigned and not yet ended
  };
  using ResultsBySession = std::map<SessionId, dragon::v1::HeadMessage>;

  // All below run with mu_ held.
  void DispatchLocked();
  void FinishLocked(Task* task, dragon::v1::TaskState state, dragon::v1::Outcome outcome,
                    dragon::v1::FailureKind failure, std::string error, std::string data,
                    int64_t now, ResultsBySession* results);
  // Each session's results, with the ids held for it that they do not answer.
  void SendResultsLocked(ResultsBySession* results);
  // Tick: every held id leaves, so that a long task's id is known within a tick.
  void FlushHeldAcceptedLocked();
  const std::string& NodeNameLocked(AgentIndex agent) const;
  // The live agent serving `node_id` (TaskSubmission.data_node), or kNoAgent
  // for a node unknown, lost or gone: then the task has no preference.
  AgentIndex DataAgentLocked(const std::string& node_id) const;
  // How an incarnation ended, which decides what EndAgentLocked does.
  enum class AgentEnd {
    kStreamEnded,    // its stream ended (broke, closed): lost; the launcher is told
    kLeftOnRequest,  // the head told it to go (shutdown): gone
    kSilent,         // heartbeats stopped: lost; its stream is dropped, the launcher told
    kReplaced,       // a new incarnation registered: lost; its stream is dropped
  };
  // --- TaskIO and TaskLogs (head_task_io.cc) ---
  // An agent's update: its TaskIO frames and TaskLogs answers; opens of
  // channels whose task has now started (or ended after running) go out.
  void TaskIOUpdateLocked(AgentIndex agent, dragon::v1::AgentUpdate* update);
  // A task ended: a channel that never reached an agent ends with it.
  void TaskIOTaskEndedLocked(const Task& task);
  // The agent's incarnation ended: its channels and logs queries fail.
  void EndTaskIOOfAgentLocked(AgentIndex agent, const std::string& why);
  void EndAllTaskIOLocked(const std::string& why);
  void EndTaskIOChannelLocked(uint64_t channel, absl::Status status);
  void SendTaskIOOpenLocked(uint64_t channel, TaskIOChannel* ch);
  void PushTaskIOLocked(AgentIndex agent, std::vector<dragon::v1::TaskIOFrame> frames);

  // Cleans up after an incarnation whose membership has ended: closes (and
  // for kSilent/kReplaced drops) its stream, takes its work back, tells the
  // launcher of a loss it did not cause. Once per incarnation.
  void EndAgentLocked(AgentIndex agent, const std::string& why, AgentEnd how,
                      ResultsBySession* results);
  // --- resources (head_resources.cc) ---
  // Checks and records a submission's ResourceRequest on its task; returns
  // why it is refused ("" when accepted) and sets *kind (REFUSED for a
  // malformed request, UNSATISFIABLE for one no node or set of nodes of this
  // head could ever hold).
  std::string AdmitResourcesLocked(Task* task, const dragon::v1::ResourceRequest& request,
                                   dragon::v1::FailureKind* kind);
  // Queues a pending task on its path (plain slots or placed); `front`: it
  // was taken back from a node and goes before its equals.
  void EnqueueLocked(Task* task, bool front);
  // Undoes a task's placement: its slot or resources are free again, it
  // leaves its agents' task sets, the hold-only members of its gang are told
  // to let go. Its state is the caller's.
  void UnplaceLocked(Task* task);
  // Places what fits of the placed tasks; their assignments go into
  // `batches` (the leader's with the payload, hold-only ones for members).
  void DispatchPlacedLocked(int64_t now, std::map<AgentIndex, dragon::v1::HeadToAgent>* batches);
  // The lost `member` held a share of a gang task led elsewhere: its leader
  // is told to cancel; its report then re-runs or fails the task.
  void GangMemberLostLocked(Task* task, AgentIndex member, const std::string& why);
  // A result for a task whose gang lost a member: true when handled here
  // (re-queued as an infrastructure retry, or failed as NODE_LOST).
  bool GangBrokenResultLocked(Task* task, const dragon::v1::TaskResult& result, int64_t now,
                              ResultsBySession* results);
  // Why a request of `task` cannot ever be placed, for its error.
  std::string UnsatisfiableTextLocked(const Task& task) const;

  // A task the lost `agent` was running: run again (infra retry) or failed.
  void RetryOrFailLocked(Task* task, AgentIndex agent, const std::string& why, int64_t now,
                         ResultsBySession* results);
  // A task sent to `agent` and not started goes back to the front of the queue.
  void RequeueLocked(Task* task, AgentIndex agent, int64_t now);
  // Fails every queued task once the no-node grace has expired.
  void FailQueuedWithoutNodesLocked(ResultsBySession* results);
  void PingLocked(AgentIndex agent, uint64_t seq);
  // Asks the agent to give back the tasks it was sent and has not started
  // (drain, removal, the end of its allocation); returns how many.
  int AskBackUnstartedLocked(AgentIndex agent, const std::string& reason);
  // Drains the nodes whose allocation ends within their drain window
  // (Register.job_end_us - drain_before_end_ms), once each.
  void DrainEndingLocked();
  // A node being removed that runs nothing any more is told to leave.
  void FinishRemovalLocked(AgentIndex agent);
  void FillNodeInfoLocked(AgentIndex agent, dragon::v1::NodeInfo* node) const;
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
  Membership membership_;
  std::map<SessionId, Session> sessions_;
  SessionId next_session_ = 1;
  // Bytes of task payloads and of result data that went through the head
  // (StatusReply.relayed_task_bytes).
  uint64_t relayed_task_bytes_ = 0;
  std::vector<Agent> agents_;  // indexed by AgentIndex (one per incarnation)
  bool shutting_down_ = false;
  std::function<void(const NodeLoss&)> on_node_loss_;
  std::string launch_problem_;
  // Cancel calls waiting (lock released) on a task they hold: forgetting is
  // put off meanwhile so that their task cannot vanish under them.
  int cancel_waiters_ = 0;
  // TaskIO channels by id, the channel of each task, TaskLogs calls waiting.
  std::map<uint64_t, TaskIOChannel> io_channels_;
  std::unordered_map<TaskId, uint64_t> io_by_task_;
  uint64_t next_io_channel_ = 1;
  std::map<uint64_t, TaskLogsWait*> logs_waits_;
  uint64_t next_logs_query_ = 1;
  std::condition_variable logs_cv_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_HEAD_H_
