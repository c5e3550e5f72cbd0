// AgentBarriers: the Barrier operations a home agent does for parties on
// other nodes (issue 14; dragon_parsl.comm.Barrier unpickled on another
// host). They come as ChannelRequest BARRIER_* ops through AgentChannels'
// routing (the party's agent forwards them over UCX to the barrier's home
// node) and are done here on the pool's ShmBarrier.
//
// A party cannot block inside an agent (the call threads would be held by a
// slow round), so it waits in slices: BARRIER_ARRIVE counts it once and gives
// its ticket, then BARRIER_AWAIT with the ticket, each waiting at most
// AgentChannels::kMaxWait, until the round is over; at its own timeout
// BARRIER_GIVE_UP breaks the barrier (as a local Wait that times out). A
// party whose wait is interrupted (Ctrl-C, a walltime) sends
// BARRIER_INTERRUPT, which breaks it at once with the party's reason.
//
// A remote party that dies, or whose node or agent is lost, is found by a
// lease rather than by asking its node (as the Pipe's PEER_ALIVE does): every
// slice renews it, and one not renewed within kLease breaks the barrier,
// seen by the next waiter of the home node that wakes. Why a lease: the
// barrier's waiters sleep in the barrier itself (processes of the home node,
// the home agent's call threads), which can read a time in shared memory but
// cannot ask another node; a lease also covers every way a party goes
// silent (its process, its agent, its node, the link) with one rule, at no
// cost while the party keeps calling.
#ifndef DRAGON_AGENT_AGENT_BARRIERS_H_
#define DRAGON_AGENT_AGENT_BARRIERS_H_

#include <functional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/shm_pool.h"
#include "proto/agent.pb.h"

namespace dragon::agent {

class AgentBarriers {
 public:
  // How long a remote party's arrival holds without a slice: many slices
  // (each at most 200 ms, plus the forwarding both ways), so that a loaded
  // node does not break a barrier by a late slice, and short enough that the
  // other parties learn of a lost one within a few seconds.
  static constexpr absl::Duration kLease = absl::Seconds(3);
  // This node's monotonic time (shm_object::MonotonicNow: the clock the
  // barrier's leases are kept in); a test gives one that runs behind to make
  // leases that have already lapsed.
  using Clock = std::function<absl::Duration()>;

  explicit AgentBarriers(common::ShmPool* pool, Clock clock = nullptr);

  static bool Handles(v1::ChannelRequest::Op op);
  // A BARRIER_* request for the barrier `ref` (request.ref(), decoded) of
  // this node's pool, waiting at most `wait` for the round. Errors keep
  // ShmBarrier's codes: FailedPrecondition (broken), DeadlineExceeded
  // (GIVE_UP: not all arrived in time, broken now), Unavailable (its creator
  // exited), NotFound (gone), InvalidArgument (not a barrier).
  absl::StatusOr<v1::ChannelReply> Apply(const common::BlockRef& ref,
                                         const v1::ChannelRequest& request, absl::Duration wait);

 private:
  common::ShmPool* const pool_;
  const Clock clock_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_AGENT_BARRIERS_H_
