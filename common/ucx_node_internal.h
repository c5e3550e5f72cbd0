// UcxNode's private state, shared by ucx_node.cc (setup, progress thread,
// peers, shutdown) and ucx_node_ops.cc (Send, Receive, Get). Not for users.
#ifndef DRAGON_COMMON_UCX_NODE_INTERNAL_H_
#define DRAGON_COMMON_UCX_NODE_INTERNAL_H_

#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/ucx_node.h"

namespace dragon::common {

struct UcxNode::Peer {
  UcxNode* node;
  uint64_t id;
  std::string name;
  // Null once closed (lost, disconnected, or shut down).
  ucp_ep_h ep = nullptr;
  // OK while usable; else what every operation on it returns.
  absl::Status failure;
  // Being disconnected: no new operations, those in flight may finish.
  bool closing = false;
};

// One UCX request a caller waits for. Lives on the heap: a Receive that gives
// up on a message UCX is still writing into `buffer` leaves the Op
// `orphaned`, and the completion callback frees it.
struct UcxNode::Op {
  void* request = nullptr;  // UCX's, until freed
  bool done = false;
  bool orphaned = false;
  // A send or get: UCX may have to keep pushing it out from progress.
  bool is_transfer = false;
  ucs_status_t status = UCS_OK;
  size_t length = 0;   // bytes received
  std::string buffer;  // Receive's message
};

// "UCX peer <name>: <what>", the prefix of every error about a peer.
inline std::string PeerMessage(const std::string& name, absl::string_view what) {
  return absl::StrCat("UCX peer ", name, ": ", what);
}

}  // namespace dragon::common

#endif  // DRAGON_COMMON_UCX_NODE_INTERNAL_H_
