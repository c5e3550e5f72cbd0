// dragon-agent's data plane as one piece (issue 14): the directory of other
// nodes' data planes (the head's node list), the DataPlane moving pool
// blocks over UCX, the Dictionary shards it holds (agent_dictionary.h), the
// channels of its pool used from other nodes (agent_channels.h), and the
// AgentData service through which the node's processes ask for transfers,
// Dictionary and channel operations (the socket `<pool path>.sock`). What the
// agent publishes about it goes into its Register.
//
// Optional by design: an agent whose data plane cannot start (no UCX
// transport, a socket path too long) runs without one, and task data that
// would cross nodes through it goes inline instead.
#ifndef DRAGON_AGENT_AGENT_DATA_PLANE_H_
#define DRAGON_AGENT_AGENT_DATA_PLANE_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/agent_channels.h"
#include "agent/agent_dictionary.h"
#include "agent/data_plane.h"
#include "agent/data_service.h"
#include "agent/peer_directory.h"
#include "common/shm_pool.h"
#include "proto/agent.pb.h"

namespace dragon::agent {

// Other agents' Calls carry, as their first byte, the service they are for
// (AgentDictionary::kCallService, AgentChannels::kCallService): one
// DataPlane call_handler that hands each payload, whole, to that service's
// handler (which checks and skips the byte). An unknown byte is refused
// InvalidArgument naming it and the sender.
CallHandler DispatchCalls(std::map<char, CallHandler> services);

struct AgentDataPlaneOptions {
  std::string node_id;
  // The head, for the directory's ListNodes (the agent's token and TLS).
  std::string head_address;
  std::string token;
  std::string tls_ca;
  // The node's pool file; the socket is this + ".sock".
  std::string pool_path;
};

class AgentDataPlane {
 public:
  // Starts directory, DataPlane (UCX worker named after the node, the pool
  // registered) and service, in that order. Errors say which part failed
  // and why; nothing is left running or on disk then.
  static absl::StatusOr<std::unique_ptr<AgentDataPlane>> Start(common::ShmPool* pool,
                                                               const AgentDataPlaneOptions& options);
  // Service first (no new requests), then the DataPlane, then the directory;
  // the pool is the caller's and goes after this.
  ~AgentDataPlane();

  // Register.ucx_address, shm_pool_rkey, shm_pool_address, data_socket.
  void FillRegister(v1::Register* reg) const;
  const std::string& socket_path() const { return service_->socket_path(); }
  DataPlane* plane() { return plane_.get(); }

 private:
  AgentDataPlane() = default;

  std::unique_ptr<HeadPeerDirectory> directory_;
  std::unique_ptr<AgentDictionary> dictionary_;
  std::unique_ptr<AgentChannels> channels_;
  std::unique_ptr<DataPlane> plane_;
  std::unique_ptr<BlockMover> mover_;
  std::unique_ptr<DataService> service_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_AGENT_DATA_PLANE_H_
