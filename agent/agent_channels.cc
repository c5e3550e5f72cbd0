#include "agent/agent_channels.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/shm_channel.h"

namespace dragon::agent {
namespace {

using common::BlockRef;
using common::ShmChannel;

// See Route.
constexpr absl::Duration kDefaultForwardTimeout = absl::Seconds(60);

absl::StatusOr<BlockRef> DecodeRef(const std::string& bytes, const char* field) {
  absl::StatusOr<BlockRef> ref = BlockRef::Decode(bytes);
  if (!ref.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("ChannelRequest.", field, " (", bytes.size(),
                                                   " bytes) is not a block reference: ",
                                                   ref.status().message()));
  }
  return *ref;
}

absl::Duration WaitOf(const v1::ChannelRequest& request) {
  return std::min(absl::Milliseconds(request.wait_ms()), AgentChannels::kMaxWait);
}

// How long a large message's Pull or Push may take (the call's own timeout).
absl::Duration TransferTimeout(const v1::ChannelRequest& request) {
  return request.timeout_ms() > 0 ? absl::Milliseconds(request.timeout_ms())
                                  : kDefaultForwardTimeout;
}

std::string NodeAt(const char* field) {
  return std::string(field, strnlen(field, PipeEnds::kNodeBytes));
}

}  // namespace

AgentChannels::AgentChannels(std::string node_id, common::ShmPool* pool,
                             AgentBarriers::Clock barrier_clock)
    : node_id_(std::move(node_id)),
      pool_(pool),
      barriers_(pool, std::move(barrier_clock)),
      forwarding_(node_id_, kCallService, "channel",
                  [this](const v1::ChannelRequest& request) { return Apply(request); }) {}

void AgentChannels::SetPlane(DataPlane* plane) {
  forwarding_.SetPlane(plane);
  plane_.store(plane);
}

CallHandler AgentChannels::Handler() { return forwarding_.Handler(); }

absl::StatusOr<v1::ChannelReply> AgentChannels::Route(const v1::ChannelRequest& request) {
  if (request.op() == v1::ChannelRequest::NODE_ID) {
    v1::ChannelReply reply;
    reply.set_node_id(node_id_);
    return reply;
  }
  if (request.node_id().empty()) {
    return absl::InvalidArgumentError("ChannelRequest.node_id is empty: which node's pool?");
  }
  // Beyond the home agent's own wait: the forwarding, both ways (a 1 GiB
  // message over the link), when the caller gave no timeout.
  const absl::Duration timeout = request.timeout_ms() > 0
                                     ? absl::Milliseconds(request.timeout_ms())
                                     : kDefaultForwardTimeout;
  return forwarding_.Route(request, timeout);
}

absl::StatusOr<char*> AgentChannels::PipeEndsBlock(const v1::ChannelRequest& request) {
  if (request.end() != 0 && request.end() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChannelRequest.end is ", request.end(), ": a Pipe has ends 0 and 1"));
  }
  absl::StatusOr<BlockRef> ref = DecodeRef(request.pids_ref(), "pids_ref");
  if (!ref.ok()) return ref.status();
  absl::StatusOr<absl::Span<char>> block = pool_->Resolve(*ref);
  if (!block.ok()) return block.status();
  if (block->size() < PipeEnds::kBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the Pipe's ends block has ", block->size(),
                                                   " bytes, fewer than ", PipeEnds::kBytes));
  }
  return block->data();
}

absl::StatusOr<pid_t> AgentChannels::LocalPeer(const v1::ChannelRequest& request) {
  if (request.pids_ref().empty()) return 0;  // a Queue: no peer
  absl::StatusOr<char*> block = PipeEndsBlock(request);
  if (!block.ok()) return block.status();
  const int other = 1 - request.end();
  int32_t pid = 0;
  std::memcpy(&pid, *block + 4 * other, sizeof(pid));
  const std::string node = NodeAt(*block + PipeEnds::kNodesOffset + other * PipeEnds::kNodeBytes);
  if (!node.empty() && node != node_id_) return 0;  // watched by its caller (PEER_ALIVE)
  return static_cast<pid_t>(pid);
}

absl::StatusOr<v1::ChannelReply> AgentChannels::ClaimEnd(const v1::ChannelRequest& request) {
  if (request.caller_node().size() >= PipeEnds::kNodeBytes) {
    return absl::InvalidArgumentError(absl::StrCat("node id ", request.caller_node(), " is longer than ",
                                                   PipeEnds::kNodeBytes - 1, " bytes"));
  }
  absl::StatusOr<char*> block = PipeEndsBlock(request);
  if (!block.ok()) return block.status();
  const int32_t pid = request.caller_pid();
  std::memcpy(*block + 4 * request.end(), &pid, sizeof(pid));
  char* node = *block + PipeEnds::kNodesOffset + request.end() * PipeEnds::kNodeBytes;
  std::memset(node, 0, PipeEnds::kNodeBytes);
  std::memcpy(node, request.caller_node().data(), request.caller_node().size());
  return v1::ChannelReply();
}

absl::StatusOr<v1::ChannelReply> AgentChannels::Apply(const v1::ChannelRequest& request) {
  v1::ChannelReply reply;
  switch (request.op()) {
    case v1::ChannelRequest::PEER_ALIVE:
      reply.set_alive(request.caller_pid() > 0 &&
                      common::shm_object::ProcessRuns(request.caller_pid(), 0));
      return reply;
    case v1::ChannelRequest::CLAIM_END:
      return ClaimEnd(request);
    case v1::ChannelRequest::NODE_ID:
      reply.set_node_id(node_id_);
      return reply;
    default:
      break;
  }
  absl::StatusOr<BlockRef> ref = DecodeRef(request.ref(), "ref");
  if (!ref.ok()) return ref.status();
  if (AgentBarriers::Handles(request.op())) return barriers_.Apply(*ref, request, WaitOf(request));
  // Opened for each request, not cached: a destroyed channel's block may be
  // reused, and Open checks the block's generation (it is cheap).
  absl::StatusOr<ShmChannel> channel = ShmChannel::Open(*pool_, *ref);
  if (!channel.ok()) return channel.status();
  switch (request.op()) {
    case v1::ChannelRequest::SEND: {
      absl::StatusOr<pid_t> peer = LocalPeer(request);
      if (!peer.ok()) return peer.status();
      if (!request.block_ref().empty()) return SendPulled(*channel, request, *peer);
      absl::Status sent = channel->Send(request.message(), WaitOf(request), *peer);
      if (absl::IsDeadlineExceeded(sent)) {
        reply.set_would_block(true);
      } else if (!sent.ok()) {
        return sent;
      }
      return reply;
    }
    case v1::ChannelRequest::RECV: {
      absl::StatusOr<pid_t> peer = LocalPeer(request);
      if (!peer.ok()) return peer.status();
      if (request.accept_block() && request.caller_pid() > 0 && !request.caller_node().empty() &&
          request.caller_node() != node_id_ && plane_.load() != nullptr && TakeHold()) {
        // At most kPutBackSlots messages are out of their rings here at once
        // (see ShmChannel::kPutBackSlots): each can go back if its push fails.
        absl::StatusOr<v1::ChannelReply> pushed = ReceivePushed(*channel, request, *peer);
        held_.fetch_sub(1);
        return pushed;
      }
      // No hold free (that many large receives in flight): the message, if
      // any, comes back inside the reply, as a small one does.
      absl::Status got = channel->ReceiveInto(*reply.mutable_message(), WaitOf(request), *peer);
      if (absl::IsDeadlineExceeded(got)) {
        reply.set_would_block(true);
      } else if (!got.ok()) {
        return got;
      }
      return reply;
    }
    case v1::ChannelRequest::CLOSE:
      if (absl::Status closed = channel->Close(); !closed.ok()) return closed;
      return reply;
    case v1::ChannelRequest::STATS: {
      absl::StatusOr<common::ShmChannelStats> stats = channel->Stats();
      if (!stats.ok()) return stats.status();
      reply.set_count(stats->count);
      reply.set_capacity(stats->capacity);
      reply.set_closed(stats->closed);
      return reply;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("ChannelRequest.op ", static_cast<int>(request.op()), " is not an operation"));
  }
}

absl::StatusOr<v1::ChannelReply> AgentChannels::SendPulled(ShmChannel& channel,
                                                           const v1::ChannelRequest& request,
                                                           pid_t peer) {
  DataPlane* plane = plane_.load();
  if (plane == nullptr) {
    return absl::UnavailableError(absl::StrCat("node ", node_id_, " cannot pull a message from node ",
                                               request.block_node(),
                                               ": its data plane is not up"));
  }
  absl::StatusOr<BlockRef> from = DecodeRef(request.block_ref(), "block_ref");
  if (!from.ok()) return from.status();
  v1::ChannelReply reply;
  // Pulled only once there is room: a full channel costs no transfer.
  if (absl::Status room = channel.WaitForRoom(WaitOf(request), peer); !room.ok()) {
    if (!absl::IsDeadlineExceeded(room)) return room;
    reply.set_would_block(true);
    return reply;
  }
  const uint64_t size = request.block_size();
  absl::StatusOr<BlockRef> block =
      plane->Pull(request.block_node(), *from, size, getpid(), TransferTimeout(request));
  if (!block.ok()) {
    return absl::Status(block.status().code(),
                        absl::StrCat("a channel message of ", size, " bytes from node ",
                                     request.block_node(), ": ", block.status().message()));
  }
  absl::Status sent = channel.SendOwnedBlock(*block, size, WaitOf(request), peer);
  if (!sent.ok()) {
    (void)pool_->FreeIfOwner(*block, getpid());  // not queued: still this agent's
    if (!absl::IsDeadlineExceeded(sent)) return sent;
    reply.set_would_block(true);
  }
  return reply;
}

bool AgentChannels::TakeHold() {
  int held = held_.load();
  while (held < static_cast<int>(common::ShmChannel::kPutBackSlots)) {
    if (held_.compare_exchange_weak(held, held + 1)) return true;
  }
  return false;
}

absl::StatusOr<v1::ChannelReply> AgentChannels::ReceivePushed(ShmChannel& channel,
                                                              const v1::ChannelRequest& request,
                                                              pid_t peer) {
  v1::ChannelReply reply;
  std::string small;
  absl::StatusOr<common::ShmMessage> got = channel.ReceiveSmallInto(small, WaitOf(request), peer);
  if (absl::IsDeadlineExceeded(got.status())) {
    reply.set_would_block(true);
    return reply;
  }
  if (!got.ok()) return got.status();
  if (got->in_small) {
    reply.set_message(std::move(small));
    return reply;
  }
  // The block is this agent's now: freed here unless it goes back in the ring.
  const common::ShmMessage message = *got;
  if (message.size < kBlockThreshold) {
    absl::StatusOr<absl::Span<char>> bytes = pool_->Resolve(message.block);
    if (bytes.ok()) reply.set_message(bytes->data(), message.size);
    (void)pool_->Free(message.block);
    if (!bytes.ok()) return bytes.status();
    return reply;
  }
  const std::string& node = request.caller_node();
  absl::StatusOr<BlockRef> there = plane_.load()->Push(node, message.block, message.size,
                                                       request.caller_pid(),
                                                       TransferTimeout(request));
  if (there.ok()) {
    (void)pool_->Free(message.block);
    reply.set_block_ref(there->Encode());
    reply.set_block_size(message.size);
    return reply;
  }
  // Not placed on the receiver's node: the message goes back at the head for
  // the next receive (this receiver's retry, or another's).
  // It has a slot: this agent holds at most kPutBackSlots taken messages.
  absl::Status kept = channel.PutBack(message.block, message.size);
  if (!kept.ok()) (void)pool_->Free(message.block);
  return absl::Status(
      there.status().code(),
      absl::StrCat("a channel message of ", message.size, " bytes could not be placed on node ",
                   node, " (", there.status().message(), "); ",
                   kept.ok() ? "it is kept in the channel, first in line"
                             : absl::StrCat("it is lost: ", kept.message())));
}

}  // namespace dragon::agent
