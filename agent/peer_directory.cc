#include "agent/peer_directory.h"

#include <grpcpp/grpcpp.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/transport.h"
#include "proto/head.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

// What the cache holds for one node of a ListNodes answer.
absl::StatusOr<PeerInfo> PeerOf(const v1::NodeInfo& node) {
  if (node.state() == "lost" || node.state() == "gone") {
    return absl::NotFoundError(absl::StrCat("node ", node.node_id(), " is ", node.state(),
                                            node.lost_reason().empty() ? "" : ": ",
                                            node.lost_reason()));
  }
  if (node.ucx_address().empty()) {
    return absl::NotFoundError(absl::StrCat("node ", node.node_id(),
                                            " has no data plane (its agent runs without a pool "
                                            "or with --noucx)"));
  }
  PeerInfo info;
  info.node_id = node.node_id();
  info.ucx_address = node.ucx_address();
  info.pool_rkey = node.shm_pool_rkey();
  info.pool_address = node.shm_pool_address();
  info.pool_bytes = node.shm_pool_bytes();
  return info;
}

// A client's data plane (ListNodesReply.data_peers): always live while listed
// (the head drops it when the client's session closes).
PeerInfo PeerOf(const v1::DataPeer& peer) {
  PeerInfo info;
  info.node_id = peer.peer_id();
  info.ucx_address = peer.ucx_address();
  info.pool_rkey = peer.shm_pool_rkey();
  info.pool_address = peer.shm_pool_address();
  info.pool_bytes = peer.shm_pool_bytes();
  return info;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HeadPeerDirectory>> HeadPeerDirectory::Connect(
    const HeadPeerDirectoryOptions& options) {
  common::ClientTransport transport;
  transport.token = options.token;
  transport.tls_ca = options.tls_ca;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      common::MakeChannel(options.head_address, transport);
  if (!channel.ok()) return channel.status();
  std::shared_ptr<v1::HeadService::Stub> stub = v1::HeadService::NewStub(*channel);
  ListNodesFn list = [stub, timeout = options.call_timeout]() -> absl::StatusOr<v1::ListNodesReply> {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    v1::ListNodesReply reply;
    const grpc::Status status = stub->ListNodes(&context, v1::ListNodesRequest(), &reply);
    if (!status.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          status.error_message());
    }
    return reply;
  };
  return std::make_unique<HeadPeerDirectory>(options.head_address, std::move(list));
}

HeadPeerDirectory::HeadPeerDirectory(std::string head_address, ListNodesFn list_nodes)
    : head_address_(std::move(head_address)), list_nodes_(std::move(list_nodes)) {}

uint64_t HeadPeerDirectory::list_calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

int HeadPeerDirectory::waiting_lookups() const {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

absl::StatusOr<PeerInfo> HeadPeerDirectory::FromCache(const std::string& node_id) const {
  auto it = cache_.find(node_id);
  if (it == cache_.end()) {
    return absl::NotFoundError(absl::StrCat(
        "node ", node_id, " is not in the node list of dragond at ", head_address_,
        " (nor a client's data peer: those leave the list when their session closes)"));
  }
  return it->second;
}

absl::Status HeadPeerDirectory::LookupFailed(const std::string& node_id) const {
  return absl::UnavailableError(absl::StrCat("cannot look up node ", node_id,
                                             "'s data plane: ListNodes on dragond at ",
                                             head_address_, " failed: ", last_error_.message()));
}

absl::StatusOr<PeerInfo> HeadPeerDirectory::Lookup(const std::string& node_id, bool refresh) {
  absl::MutexLock lock(&mu_);
  if (!refresh && cache_.count(node_id) > 0) return FromCache(node_id);
  if (listing_) {
    // Share the call in flight. It may have left just before this lookup's
    // peer failed; then the next failure refreshes again, and the data
    // plane's retry covers a restart seen late. One call per burst matters
    // more: every transfer to a dead peer fails at once.
    const uint64_t seen = generation_;
    ++waiting_;
    while (generation_ == seen) listed_.Wait(&mu_);
    --waiting_;
    if (!last_error_.ok()) return LookupFailed(node_id);
    return FromCache(node_id);
  }
  listing_ = true;
  ++calls_;
  mu_.Unlock();
  absl::StatusOr<v1::ListNodesReply> reply = list_nodes_();
  mu_.Lock();
  listing_ = false;
  ++generation_;
  listed_.SignalAll();
  if (!reply.ok()) {
    last_error_ = reply.status();
    spdlog::warn("ListNodes on dragond at {} failed: {}", head_address_, last_error_.ToString());
    return LookupFailed(node_id);
  }
  last_error_ = absl::OkStatus();
  cache_.clear();
  client_peers_.clear();
  for (const v1::NodeInfo& node : reply->nodes()) cache_.emplace(node.node_id(), PeerOf(node));
  // After the nodes: an id both a node and a client's peer stays the node's.
  for (const v1::DataPeer& peer : reply->data_peers()) {
    if (cache_.emplace(peer.peer_id(), PeerOf(peer)).second) client_peers_.insert(peer.peer_id());
  }
  return FromCache(node_id);
}

absl::StatusOr<std::vector<std::string>> HeadPeerDirectory::NodesWithDataPlane() {
  // A refreshing lookup of no node fills the cache from a fresh ListNodes
  // (shared with one in flight); its NotFound for "" means nothing.
  absl::StatusOr<PeerInfo> refreshed = Lookup("", /*refresh=*/true);
  absl::MutexLock lock(&mu_);
  if (!last_error_.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot list the nodes with a data plane: ListNodes "
                                               "on dragond at ", head_address_, " failed: ",
                                               last_error_.message()));
  }
  std::vector<std::string> nodes;
  for (const auto& [node_id, info] : cache_) {
    // Clients' data peers hold no Dictionary shards: nodes only.
    if (info.ok() && client_peers_.count(node_id) == 0) nodes.push_back(node_id);
  }
  return nodes;  // std::map: sorted
}

}  // namespace dragon::agent
