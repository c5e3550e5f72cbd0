// AgentChannels: what an agent does for channels used across nodes (issue 14;
// dragon_parsl.comm Pipe and Queue). A channel lives in the pool of one node,
// its home. A process on another node asks its own agent
// (AgentData.Channel over the node's socket); that agent forwards the
// operation over UCX (DataPlane::Call) to the home node's agent, whose call
// handler does it on its pool (ShmChannel, common/shm_channel.h).
//
// Nobody waits long inside an agent: a send or receive waits at home at most
// kMaxWait and then answers would_block; the caller's process loops until its
// own timeout. So the agents' call threads are never held by a slow consumer,
// and a caller's Ctrl-C, timeout or death ends its wait within a slice.
//
// Liveness of a Pipe's other end: the block `pids_ref` (see PipeEnds) records
// which process of which node holds each end. The home agent passes the
// other end's pid to the channel when that process is on its node (the
// channel then fails Unavailable once it exits); a process on another node
// is asked about with PEER_ALIVE, answered by that node's agent.
//
// A large message (kBlockThreshold and up) does not travel inside the call:
//  - SEND: the sender writes it into a block of its own node's pool and the
//    request names that block; the home agent Pulls it (UCX Get) into a
//    block of its pool and queues that block (ShmChannel::SendOwnedBlock, no
//    copy). The sender frees its block when the call returns. The home
//    agent pulls only once the channel has room (else it answers
//    would_block); a sender that takes that slot first leaves the pulled copy
//    freed and would_block too (the next slice pulls again).
//  - RECV (accept_block): the home agent takes the message and Pushes its
//    block into a new block of the receiver's node's pool owned by the
//    receiving process, and answers with that block, which the receiver reads
//    and frees. When the push fails (the receiver's node lost or its pool
//    full) the message is put back at the head of the channel
//    (ShmChannel::PutBack), so another receive gets it, and the receiver's
//    call fails with the push's error. It always has a slot to go back to:
//    the ring has ShmChannel::kPutBackSlots slots senders never use, and this
//    agent has at most that many messages taken at once (more concurrent
//    large receives get their message inside the reply instead).
//
// A Barrier of this node's pool used by a party on another node goes the
// same way: its BARRIER_* ops are done at home by AgentBarriers.
#ifndef DRAGON_AGENT_AGENT_CHANNELS_H_
#define DRAGON_AGENT_AGENT_CHANNELS_H_

#include <sys/types.h>

#include <atomic>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/agent_barriers.h"
#include "agent/data_plane.h"
#include "agent/forwarding_service.h"
#include "common/shm_channel.h"
#include "common/shm_pool.h"
#include "proto/agent.pb.h"

namespace dragon::agent {

// A Pipe's ends block (written by dragon_parsl.comm too): int32 pid of end 0,
// int32 pid of end 1, then per end a NUL-padded node id of kNodeBytes (empty:
// the pool's own node).
struct PipeEnds {
  static constexpr uint64_t kNodesOffset = 8;
  static constexpr uint64_t kNodeBytes = 64;
  static constexpr uint64_t kBytes = kNodesOffset + 2 * kNodeBytes;
};

class AgentChannels {
 public:
  // First byte of this service's DataPlane::Call payloads (see
  // DispatchCalls in agent_data_plane.h).
  static constexpr char kCallService = 'C';
  // Longest wait of one SEND/RECV at home.
  static constexpr absl::Duration kMaxWait = absl::Milliseconds(200);
  // From this size on a message crosses nodes as a pool block moved by the
  // data plane (UCX Get, ~1.9 GB/s on the test bed) instead of inside the
  // forwarded call (several copies and one tag message: ~40 MB/s for 1 GiB).
  // Below it the extra round trip of a Pull or Push costs more than the
  // copies save; 64 KiB is also where task data goes by block (issue 14).
  static constexpr uint64_t kBlockThreshold = uint64_t{64} << 10;

  // `barrier_clock`: AgentBarriers::Clock (null: the node's monotonic clock).
  AgentChannels(std::string node_id, common::ShmPool* pool,
                AgentBarriers::Clock barrier_clock = nullptr);

  // For DataPlaneOptions::call_handler (through DispatchCalls): a request
  // another agent forwarded for a channel of this node's pool.
  CallHandler Handler();
  // The plane that forwards requests for other nodes; until set they fail
  // Unavailable.
  void SetPlane(DataPlane* plane);

  // AgentData.Channel: NODE_ID answered here; this node's channels operated
  // here; another node's forwarded to it (errors name that node).
  absl::StatusOr<v1::ChannelReply> Route(const v1::ChannelRequest& request);

  // The operation on this node's pool (the request's node_id is this node).
  // Errors keep ShmChannel's codes: OutOfRange (closed and drained),
  // FailedPrecondition (send on a closed channel), Unavailable (the
  // channel's creator or the Pipe's other end exited), NotFound (the channel
  // is gone), ResourceExhausted (the pool is full), InvalidArgument (a ref
  // that is not a channel); the BARRIER_* ops AgentBarriers'.
  absl::StatusOr<v1::ChannelReply> Apply(const v1::ChannelRequest& request);

  const std::string& node_id() const { return node_id_; }

 private:
  // The Pipe's ends block (request.pids_ref()), checked: `end` 0 or 1, big
  // enough.
  absl::StatusOr<char*> PipeEndsBlock(const v1::ChannelRequest& request);
  // The other end's process when it runs on this node (0: none, or remote).
  absl::StatusOr<pid_t> LocalPeer(const v1::ChannelRequest& request);
  absl::StatusOr<v1::ChannelReply> ClaimEnd(const v1::ChannelRequest& request);
  // SEND of a message in a block of another node's pool (see above).
  absl::StatusOr<v1::ChannelReply> SendPulled(common::ShmChannel& channel,
                                              const v1::ChannelRequest& request, pid_t peer);
  // RECV for a process of another node that accepts a block (see above).
  absl::StatusOr<v1::ChannelReply> ReceivePushed(common::ShmChannel& channel,
                                                 const v1::ChannelRequest& request, pid_t peer);

  const std::string node_id_;
  common::ShmPool* const pool_;
  AgentBarriers barriers_;
  ForwardingService<v1::ChannelRequest, v1::ChannelReply> forwarding_;
  std::atomic<DataPlane*> plane_{nullptr};  // moves large messages' blocks
  // A hold for one ReceivePushed (a message taken out of its ring that may
  // have to go back): false when kPutBackSlots are taken.
  bool TakeHold();
  std::atomic<int> held_{0};  // ReceivePushed calls in progress
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_AGENT_CHANNELS_H_
