#include "agent/agent_channels.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/shm_channel.h"

namespace dragon::agent {
namespace {

using common::BlockRef;
using common::ShmChannel;

// Beyond the home agent's own wait: the forwarding, both ways (a 1 GiB
// message over the link), when the caller gave no timeout.
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

std::string NodeAt(const char* field) {
  return std::string(field, strnlen(field, PipeEnds::kNodeBytes));
}

}  // namespace

AgentChannels::AgentChannels(std::string node_id, common::ShmPool* pool)
    : node_id_(std::move(node_id)), pool_(pool) {}

void AgentChannels::SetPlane(DataPlane* plane) {
  absl::MutexLock lock(&mu_);
  plane_ = plane;
}

CallHandler AgentChannels::Handler() {
  return [this](const std::string& from_node, std::string payload) -> absl::StatusOr<std::string> {
    v1::ChannelRequest request;
    // Parsed past the service byte, in place: a message may be 1 GiB.
    if (payload.empty() || payload[0] != kCallService ||
        !request.ParseFromArray(payload.data() + 1, static_cast<int>(payload.size() - 1))) {
      return absl::InvalidArgumentError(
          absl::StrCat("node ", from_node, " sent a channel request that does not parse"));
    }
    payload.clear();
    payload.shrink_to_fit();
    if (request.node_id() != node_id_) {
      // Never forwarded twice (as the Dictionary's): the sender's bug.
      return absl::FailedPreconditionError(absl::StrCat("node ", from_node, " forwarded to node ",
                                                        node_id_, " a request for node ",
                                                        request.node_id()));
    }
    absl::StatusOr<v1::ChannelReply> reply = Apply(request);
    if (!reply.ok()) return reply.status();
    return reply->SerializeAsString();
  };
}

absl::StatusOr<v1::ChannelReply> AgentChannels::Route(const v1::ChannelRequest& request) {
  if (request.op() == v1::ChannelRequest::NODE_ID) {
    v1::ChannelReply reply;
    reply.set_node_id(node_id_);
    return reply;
  }
  if (request.node_id().empty()) {
    return absl::InvalidArgumentError("ChannelRequest.node_id is empty: which node's pool?");
  }
  if (request.node_id() == node_id_) return Apply(request);
  DataPlane* plane;
  {
    absl::MutexLock lock(&mu_);
    plane = plane_;
  }
  if (plane == nullptr) {
    return absl::UnavailableError(absl::StrCat("node ", node_id_, " cannot forward to node ",
                                               request.node_id(), ": its data plane is not up"));
  }
  std::string payload(1, kCallService);
  request.AppendToString(&payload);
  const absl::Duration timeout = request.timeout_ms() > 0
                                     ? absl::Milliseconds(request.timeout_ms())
                                     : kDefaultForwardTimeout;
  absl::StatusOr<std::string> answer = plane->Call(request.node_id(), std::move(payload), timeout);
  if (!answer.ok()) return answer.status();
  v1::ChannelReply reply;
  if (!reply.ParseFromString(*answer)) {
    return absl::InternalError(absl::StrCat("node ", request.node_id(),
                                            " answered a channel request with what does not "
                                            "parse as a ChannelReply"));
  }
  return reply;
}

absl::StatusOr<pid_t> AgentChannels::LocalPeer(const v1::ChannelRequest& request) {
  if (request.pids_ref().empty()) return 0;  // a Queue: no peer
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
  const int other = 1 - request.end();
  int32_t pid = 0;
  std::memcpy(&pid, block->data() + 4 * other, sizeof(pid));
  const std::string node =
      NodeAt(block->data() + PipeEnds::kNodesOffset + other * PipeEnds::kNodeBytes);
  if (!node.empty() && node != node_id_) return 0;  // watched by its caller (PEER_ALIVE)
  return static_cast<pid_t>(pid);
}

absl::StatusOr<v1::ChannelReply> AgentChannels::ClaimEnd(const v1::ChannelRequest& request) {
  if (request.end() != 0 && request.end() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ChannelRequest.end is ", request.end(), ": a Pipe has ends 0 and 1"));
  }
  if (request.caller_node().size() >= PipeEnds::kNodeBytes) {
    return absl::InvalidArgumentError(absl::StrCat("node id ", request.caller_node(), " is longer than ",
                                                   PipeEnds::kNodeBytes - 1, " bytes"));
  }
  absl::StatusOr<BlockRef> ref = DecodeRef(request.pids_ref(), "pids_ref");
  if (!ref.ok()) return ref.status();
  absl::StatusOr<absl::Span<char>> block = pool_->Resolve(*ref);
  if (!block.ok()) return block.status();
  if (block->size() < PipeEnds::kBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the Pipe's ends block has ", block->size(),
                                                   " bytes, fewer than ", PipeEnds::kBytes));
  }
  const int32_t pid = request.caller_pid();
  std::memcpy(block->data() + 4 * request.end(), &pid, sizeof(pid));
  char* node = block->data() + PipeEnds::kNodesOffset + request.end() * PipeEnds::kNodeBytes;
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
  // Opened for each request, not cached: a destroyed channel's block may be
  // reused, and Open checks the block's generation (it is cheap).
  absl::StatusOr<ShmChannel> channel = ShmChannel::Open(*pool_, *ref);
  if (!channel.ok()) return channel.status();
  switch (request.op()) {
    case v1::ChannelRequest::SEND: {
      absl::StatusOr<pid_t> peer = LocalPeer(request);
      if (!peer.ok()) return peer.status();
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

}  // namespace dragon::agent
