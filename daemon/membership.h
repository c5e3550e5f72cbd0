// Which nodes belong to the run and whether each is alive: the one owner of
// node liveness in dragond (the Head asks it; nothing else keeps a notion of
// it). Modelled on a GCS-style health-check manager: the head pings every
// member each heartbeat interval, any message from a member counts as a sign
// of life, and a member not heard from for the heartbeat timeout is lost,
// whatever the cause (dead, hung, cut off).
//
// Each registration of a node is an incarnation with its own AgentIndex (the
// Head's and the Scheduler's index of the stream). A node that registers
// again gets the next incarnation; the previous one, if still live, is fenced
// (declared lost): messages of a fenced incarnation are ignored, so a stale
// agent can never deliver a result twice.
//
// States: joining (registered, its task loop has not answered a ping yet) ->
// ready <-> draining (no new tasks) -> lost (heartbeats stopped, stream
// broke, fenced) or gone (left because the head told it to).
//
// Pure bookkeeping on an injected clock, no I/O, not thread-safe: the Head
// calls it under its lock, unit tests drive time with a FakeClock.
#ifndef DRAGON_DAEMON_MEMBERSHIP_H_
#define DRAGON_DAEMON_MEMBERSHIP_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "daemon/task_table.h"

namespace dragon::daemon {

enum class NodeState { kJoining, kReady, kDraining, kLost, kGone };

// "joining", "ready", "draining", "lost", "gone".
const char* NodeStateName(NodeState state);

struct MembershipOptions {
  // The head pings each member this often.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A member not heard from for this long is lost.
  absl::Duration heartbeat_timeout = absl::Seconds(4);
  // With no live member left after one was lost (or none joined after the
  // launcher started some), queued work may wait this long for one to come
  // back; then it fails.
  absl::Duration no_node_grace = absl::Seconds(30);
};

struct Member {
  std::string node_id;
  uint64_t incarnation = 0;
  int pid = 0;
  NodeState state = NodeState::kJoining;
  bool drain_requested = false;  // kept while joining, so it applies once ready
  absl::Time joined;
  absl::Time last_heard;
  absl::Time last_ping;
  uint64_t ping_seq = 0;    // of the last ping sent
  std::string reason;       // why lost or gone
  // Its allocation (batch job) ends at `allocation_end`; from `drain_at`
  // (that end minus the agent's drain window) it takes no new tasks.
  absl::Time allocation_end = absl::InfiniteFuture();
  absl::Time drain_at = absl::InfiniteFuture();
  bool drained_for_end = false;  // TakeEnding returned it (once)
  // Its shared-memory pool as of its last heartbeat (for NodeInfo; the pool's
  // path and capacity are in its registration).
  uint64_t shm_pool_free_bytes = 0;
  uint64_t shm_pool_blocks = 0;
};

// What Admit decided.
struct Admission {
  AgentIndex index = kNoAgent;
  uint64_t incarnation = 0;
  // A previous incarnation of the node that this one replaces (fenced now:
  // the caller must drop its stream and re-place its work), or kNoAgent.
  AgentIndex fenced = kNoAgent;
};

class Membership {
 public:
  Membership(MembershipOptions options, const common::Clock* clock);

  const MembershipOptions& options() const { return options_; }
  const common::Clock* clock() const { return clock_; }

  // A node registers. `previous_incarnation` is 0 for a freshly started
  // agent process (it replaces a live incarnation of the node, which is
  // fenced: a restarted agent wins over its hung predecessor), or the
  // incarnation an agent had before it lost its stream: it may come back
  // only if that incarnation is still the node's latest (AlreadyExists if a
  // newer agent serves the node: this one is stale and must exit).
  absl::StatusOr<Admission> Admit(const std::string& node_id, uint64_t previous_incarnation,
                                  int pid);

  // Any message from the member: it is alive.
  void Heard(AgentIndex index);
  // The member answered ping `seq` from its task loop: also alive, and a
  // joining member becomes ready (or draining, if that was asked meanwhile).
  void Answered(AgentIndex index, uint64_t seq);
  // What the member's heartbeat said of its shared-memory pool.
  void SetPoolUsage(AgentIndex index, uint64_t free_bytes, uint64_t blocks);

  // The member's stream ended or it was fenced: live -> lost. False if it
  // was not live (already lost or gone).
  bool Lose(AgentIndex index, const std::string& reason);
  // The member left because the head told it to (shutdown, removal):
  // live -> gone, which unlike a loss does not start the no-node grace.
  bool Leave(AgentIndex index, const std::string& reason);

  // Drain (true) or undrain the node's current incarnation. NotFound for an
  // unknown node, FailedPrecondition for one that is lost or gone. Returns
  // the member's index.
  absl::StatusOr<AgentIndex> SetDrain(const std::string& node_id, bool drain);

  // The member's allocation ends at `end`; it is drained `drain_before`
  // earlier (TakeEnding). InfiniteFuture: unknown, never drained for it.
  void SetAllocationEnd(AgentIndex index, absl::Time end, absl::Duration drain_before);
  // Live members whose drain point (allocation end minus drain window) has
  // passed and that were not drained for it yet: now draining (as SetDrain,
  // so a joining one drains once ready), each returned once.
  std::vector<AgentIndex> TakeEnding();

  // Live members whose next ping is due, each with the seq to send; marks
  // them pinged.
  std::vector<std::pair<AgentIndex, uint64_t>> TakeDuePings();
  // Live members not heard from within the timeout: now lost (reason says
  // for how long), returned for the caller to drop their streams.
  std::vector<AgentIndex> ExpireSilent();

  // The launcher has started agents that have not joined yet: start the
  // no-node grace now, so work never waits forever on agents that never come.
  void ExpectNodes();
  // True once there has been no live member for the grace period since the
  // last one was lost (or since ExpectNodes with none joined). Reset when a
  // member is admitted.
  bool NoNodeGraceExpired() const;
  // Why there is no node, for the errors of the work that fails.
  std::string NoNodeReason() const;

  bool Live(AgentIndex index) const;
  // Ready for new tasks (not joining, draining, lost or gone).
  bool Schedulable(AgentIndex index) const;
  size_t live_count() const { return live_; }
  const Member& member(AgentIndex index) const { return members_[index]; }
  size_t size() const { return members_.size(); }
  // The node's latest incarnation, or kNoAgent.
  AgentIndex Latest(const std::string& node_id) const;

 private:
  bool IsLive(const Member& m) const {
    return m.state != NodeState::kLost && m.state != NodeState::kGone;
  }
  bool End(AgentIndex index, NodeState to, const std::string& reason);

  const MembershipOptions options_;
  const common::Clock* clock_;
  std::vector<Member> members_;  // indexed by AgentIndex, never shrinks
  std::map<std::string, AgentIndex> latest_;  // node id -> latest incarnation's index
  size_t live_ = 0;
  // Since when no member is live, if that counts towards the grace.
  std::optional<absl::Time> empty_since_;
  std::string last_loss_;  // "node N: reason", for NoNodeReason
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_MEMBERSHIP_H_
