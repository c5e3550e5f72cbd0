// HeadPeerDirectory: where other nodes' data planes are, from the head's node
// list (HeadService.ListNodes: NodeInfo.ucx_address/shm_pool_rkey/
// shm_pool_address, which each agent publishes in its Register), and the data
// planes of clients on hosts without an agent (ListNodesReply.data_peers,
// "client-<session id>", published with PublishDataPeer): agents pull such a
// client's task arguments from its pool and push its results into it.
//
// Answers are cached per node: a DataPlane looks a peer up once and again
// only when the peer failed (refresh = true: the node's agent may have
// restarted at a new address). A miss or a refresh asks the head; at most one
// ListNodes is in flight, and lookups that arrive while it is refresh with
// its answer instead of sending their own (a burst of failures after a peer
// died costs one call, not one per transfer).
#ifndef DRAGON_AGENT_PEER_DIRECTORY_H_
#define DRAGON_AGENT_PEER_DIRECTORY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/data_plane.h"
#include "proto/head.pb.h"

namespace dragon::agent {

// One ListNodes call; errors say why (the head's address is added by the
// directory).
using ListNodesFn = std::function<absl::StatusOr<v1::ListNodesReply>()>;

struct HeadPeerDirectoryOptions {
  std::string head_address;  // HOST:PORT, for errors (and the channel)
  std::string token;         // the run's token ("" = none)
  std::string tls_ca;        // the head's CA ("" = plaintext)
  absl::Duration call_timeout = absl::Seconds(10);
};

class HeadPeerDirectory : public PeerDirectory {
 public:
  // Asks the head at options.head_address over gRPC (the agent's token and TLS).
  static absl::StatusOr<std::unique_ptr<HeadPeerDirectory>> Connect(
      const HeadPeerDirectoryOptions& options);
  // Asks `list_nodes` (tests inject a fake); `head_address` names the head in errors.
  HeadPeerDirectory(std::string head_address, ListNodesFn list_nodes);

  // NotFound "node X is not in dragond at ADDR's node list", or "node X has
  // no data plane (...)", or "node X is lost/gone"; Unavailable naming the
  // head when ListNodes fails.
  absl::StatusOr<PeerInfo> Lookup(const std::string& node_id, bool refresh) override;

  // The nodes that have a data plane now (a fresh ListNodes), sorted: where a
  // new Dictionary's shards may go (never a client's data peer). Unavailable naming the head when
  // ListNodes fails.
  absl::StatusOr<std::vector<std::string>> NodesWithDataPlane();

  // ListNodes calls made so far (for tests and logs).
  uint64_t list_calls() const;
  // Lookups now waiting for the ListNodes in flight (tests).
  int waiting_lookups() const;

 private:
  // The answer for `node_id` from the cache as the last ListNodes left it.
  absl::StatusOr<PeerInfo> FromCache(const std::string& node_id) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Unavailable naming the head and `node_id`, from last_error_.
  absl::Status LookupFailed(const std::string& node_id) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const std::string head_address_;
  const ListNodesFn list_nodes_;

  mutable absl::Mutex mu_;
  // node id -> its data plane, or why it has none, as of the last answer.
  std::map<std::string, absl::StatusOr<PeerInfo>> cache_ ABSL_GUARDED_BY(mu_);
  // The ids in cache_ that are clients' data peers, not nodes.
  std::set<std::string> client_peers_ ABSL_GUARDED_BY(mu_);
  bool listing_ ABSL_GUARDED_BY(mu_) = false;      // a ListNodes is in flight
  absl::CondVar listed_;                           // signalled when it ends
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;   // ListNodes answers (or failures) so far
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);   // of the last call (OK: it answered)
  uint64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_PEER_DIRECTORY_H_
