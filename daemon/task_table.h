// The head's record of the tasks of the run: state, where it ran, and the
// time of each transition. Every unfinished task is kept; the oldest finished
// ones are forgotten past a limit (dragond --keep-finished), a chunk at a
// time. Not thread-safe: the Head serialises access.
#ifndef DRAGON_DAEMON_TASK_TABLE_H_
#define DRAGON_DAEMON_TASK_TABLE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/head.pb.h"

namespace dragon::daemon {

using TaskId = uint64_t;
using SessionId = uint64_t;
// Index of an agent in the head's registry; kNoAgent when none.
using AgentIndex = int32_t;
inline constexpr AgentIndex kNoAgent = -1;

// What a placed task needs on each node it runs on (daemon/resources.h).
struct ResourceNeed {
  uint32_t cores = 1;   // per node: ranks per node x cores per rank
  uint64_t memory = 0;  // bytes per node; 0 = not asked (neither limited nor accounted)
  uint32_t gpus = 0;    // per node
  uint32_t nodes = 1;   // distinct agents (an MPI gang); the first one leads
  // Only agents whose host or node id is one of these (ResourceRequest.hosts,
  // @mpi_app's Policy); empty = any.
  std::vector<std::string> hosts;
};

// The resources of a task submitted with a ResourceRequest (absent for the
// plain tasks that make up floods: they cost nothing here).
struct TaskResources {
  dragon::v1::ResourceRequest request;  // as submitted
  // Placed by the ResourcePool with concrete CPU/GPU ids (the request names
  // cores, memory, GPUs or MPI ranks/nodes); otherwise the task takes the
  // plain path (one slot) and only priority and walltime apply.
  bool placed = false;
  bool mpi = false;
  ResourceNeed need;
  uint32_t ranks_per_node = 0;  // MPI, normalized
  uint32_t ranks = 0;
  uint32_t walltime_s = 0;
  int32_t priority = 0;
  // Once placed: the leader's grant (TaskInfo.grant) and the other members
  // of its gang, which hold their share (hold-only) until it ends.
  dragon::v1::ResourceGrant grant;
  std::vector<int32_t> members;
  // A member's node was lost while the gang held it: why. The leader was
  // told to cancel; its report decides between an infrastructure retry and
  // a failure (daemon/head_resources.cc).
  std::string gang_lost;
};

// One task. Laid out for a deep queue: a million queued tasks cost this
// struct (~160 bytes) plus their payload, nothing per task elsewhere in the
// table (bench/HEAD_SCALE.md).
struct Task {
  TaskId id = 0;
  SessionId session = 0;
  uint64_t client_ref = 0;
  uint64_t payload_bytes = 0;
  // Kept until the task ends so a task on a lost node can be re-queued.
  std::string payload;
  std::string error;
  // For people (the app's name); interned by the table: tasks of one app
  // share one string.
  const std::string* name = nullptr;
  int64_t submitted_us = 0;
  int64_t scheduled_us = 0;
  int64_t running_us = 0;
  int64_t finished_us = 0;
  dragon::v1::TaskState state = dragon::v1::PENDING;
  dragon::v1::TaskKind kind = dragon::v1::PYTHON;
  dragon::v1::Outcome outcome = dragon::v1::OUTCOME_UNSPECIFIED;
  AgentIndex agent = kNoAgent;
  int32_t worker_pid = 0;
  dragon::v1::FailureKind failure = dragon::v1::FAILURE_KIND_UNSPECIFIED;
  // Times it went back to the queue because its node was lost while it ran.
  uint8_t infra_attempts = 0;
  // The agent serving the node whose shared-memory pool holds its arguments
  // (TaskSubmission.data_node, resolved at submission), which the scheduler
  // prefers; kNoAgent for none (or a node unknown or lost by then). Fits in
  // the padding after infra_attempts: a queued task costs no more.
  AgentIndex data_agent = kNoAgent;
  // Null unless it was submitted with a ResourceRequest.
  std::unique_ptr<TaskResources> resources;

  const std::string& name_or_empty() const;
  int32_t priority() const { return resources ? resources->priority : 0; }
  bool placed() const { return resources && resources->placed; }
};

bool IsTerminal(dragon::v1::TaskState state);

// How many finished tasks the head keeps (dragond --keep-finished): beyond
// it the oldest are forgotten, a chunk of kTaskChunkSize at a time.
inline constexpr int64_t kKeepAllFinished = -1;
inline constexpr int64_t kDefaultKeepFinished = 1'000'000;
inline constexpr uint64_t kTaskChunkSize = 4096;

// Why `keep_finished` is not a valid retention, or OK.
absl::Status ValidateKeepFinished(int64_t keep_finished);

// Whether the service may move a task from `from` to `to`.
bool IsAllowedTransition(dragon::v1::TaskState from, dragon::v1::TaskState to);

class TaskTable {
 public:
  // Keeps at least `keep_finished` finished (terminal) tasks, and all of
  // them for kKeepAllFinished; see ForgetOldFinished.
  explicit TaskTable(int64_t keep_finished = kKeepAllFinished);

  // Adds a PENDING task and returns its id (ids count up from 1).
  TaskId Add(dragon::v1::TaskKind kind, std::string name, SessionId session,
             uint64_t client_ref, std::string payload, int64_t now_us);

  // nullptr for an id never issued and for a forgotten task.
  Task* Find(TaskId id);
  const Task* Find(TaskId id) const;
  // The task existed (ids are dense) but ForgetOldFinished dropped it.
  bool WasForgotten(TaskId id) const;

  // Frees whole chunks whose tasks have all finished, oldest chunk first,
  // while more than keep_finished finished tasks would still be retained.
  // A chunk holding an unfinished task is never freed (and does not stop
  // younger chunks from being freed). Invalidates Task pointers: call it
  // only where none are held. O(1) when there is nothing to free; freeing
  // costs O(chunk), i.e. O(1) per task over the run.
  void ForgetOldFinished();

  // Moves a task to `to`, stamping the transition time. Refuses (without
  // change) transitions that cannot happen, e.g. out of a terminal state.
  absl::Status Transition(TaskId id, dragon::v1::TaskState to, int64_t now_us);

  // Retained tasks in `state` (forgotten ones are not counted).
  uint64_t CountInState(dragon::v1::TaskState state) const;
  // Forgotten tasks that had ended in `state`.
  uint64_t ForgottenInState(dragon::v1::TaskState state) const;
  // The highest id issued so far (ids are dense: every id up to it existed).
  uint64_t size() const { return size_; }
  // Tasks still in the table.
  uint64_t retained() const { return size_ - forgotten_total_; }
  int64_t keep_finished() const { return keep_finished_; }

  // Tasks in `state` (all states for TASK_STATE_UNSPECIFIED), newest first,
  // at most `limit`; `total` receives the number that matched (from the
  // per-state counts: the scan stops once `limit` are found, so listing the
  // newest tasks of a million costs `limit` steps, not a million).
  std::vector<const Task*> List(dragon::v1::TaskState state, size_t limit,
                                uint64_t* total) const;

  // Every non-terminal task of a session, e.g. to cancel them when it closes.
  std::vector<TaskId> LiveTasksOfSession(SessionId session) const;

 private:
  // Ids are dense, so task id - 1 indexes the table. Tasks live in fixed-size
  // chunks: they never move (pointers stay valid) and growing the table never
  // copies it (no pause, no 2x peak while a big vector reallocates).
  // Finished chunks are freed whole (ForgetOldFinished).
  static constexpr int kChunkBits = 12;
  static constexpr uint64_t kChunkSize = uint64_t{1} << kChunkBits;
  static_assert(kChunkSize == kTaskChunkSize);
  struct Chunk {
    std::unique_ptr<Task[]> tasks;  // null once forgotten
    uint32_t unfinished = 0;        // tasks of the chunk not in a terminal state
    // Names past the interning limit, owned here so they go with the chunk.
    std::vector<std::unique_ptr<std::string>> own_names;
  };
  static uint64_t ChunkOf(uint64_t index) { return index >> kChunkBits; }
  // The task at `index` (id - 1); its chunk must not have been forgotten.
  Task& At(uint64_t index) { return chunks_[ChunkOf(index)].tasks[index & (kChunkSize - 1)]; }
  const Task& At(uint64_t index) const {
    return chunks_[ChunkOf(index)].tasks[index & (kChunkSize - 1)];
  }
  bool IsForgottenIndex(uint64_t index) const { return chunks_[ChunkOf(index)].tasks == nullptr; }
  const std::string* Intern(std::string name, Chunk* chunk);
  // Counts a task of the chunk as finished; queues the chunk for
  // ForgetOldFinished once it is full and all of it has finished.
  void NoteFinished(uint64_t index);
  uint64_t RetainedFinished() const;
  void ForgetChunk(uint64_t chunk);

  // Unfinished tasks of a session and the lowest id among them, so that
  // LiveTasksOfSession scans only from there (and not at all when none).
  struct SessionLive {
    uint64_t live = 0;
    TaskId first = 0;
  };

  int64_t keep_finished_;
  std::vector<Chunk> chunks_;
  uint64_t size_ = 0;
  uint64_t counts_[7] = {0};            // retained tasks by state
  uint64_t forgotten_counts_[7] = {0};  // forgotten tasks by (terminal) state
  uint64_t forgotten_total_ = 0;
  // Full chunks whose tasks have all finished, not yet forgotten: the
  // candidates of ForgetOldFinished, oldest (lowest) first.
  std::set<uint64_t> finished_chunks_;
  std::map<SessionId, SessionLive> live_by_session_;
  // Interned names; past kMaxInterned distinct ones, names are kept one per
  // task in its chunk's own_names (a client naming every task differently
  // must not grow the set without bound).
  static constexpr size_t kMaxInterned = 4096;
  std::unordered_set<std::string> names_;
};

void FillTaskInfo(const Task& task, const std::string& node,
                  dragon::v1::TaskInfo* info);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_TASK_TABLE_H_
