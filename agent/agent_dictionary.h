// AgentDictionary: what an agent does for Dictionaries (issue 14;
// dragon_parsl.comm.Dictionary). A process asks its own agent
// (AgentData.Dict over the node's socket) for an operation on the shard of
// some node: this agent applies it to its DictStore when the shard is its
// own, and otherwise forwards it over UCX (DataPlane::Call) to the agent of
// that node, whose call handler applies it there. NODES lists the nodes with
// a data plane, over which a new Dictionary spreads its keys.
#ifndef DRAGON_AGENT_AGENT_DICTIONARY_H_
#define DRAGON_AGENT_AGENT_DICTIONARY_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/data_plane.h"
#include "agent/dict_store.h"
#include "agent/forwarding_service.h"
#include "common/shm_pool.h"
#include "proto/agent.pb.h"

namespace dragon::agent {

// The nodes with a data plane (HeadPeerDirectory::NodesWithDataPlane).
using ListDataPlaneNodes = std::function<absl::StatusOr<std::vector<std::string>>()>;

class AgentDictionary {
 public:
  // First byte of this service's DataPlane::Call payloads (see
  // DispatchCalls in agent_data_plane.h); added and removed here, so that
  // AgentData.Dict's callers never see it.
  static constexpr char kCallService = 'D';

  AgentDictionary(std::string node_id, common::ShmPool* pool, ListDataPlaneNodes nodes);

  // For DataPlaneOptions::call_handler (through DispatchCalls): a
  // DictRequest another agent forwarded (after kCallService), for this
  // node's shard; the serialized DictReply.
  CallHandler Handler();
  // The plane that forwards requests for other nodes' shards; set once it
  // started (it needs Handler() first). Until then they fail Unavailable.
  void SetPlane(DataPlane* plane);

  // AgentData.Dict: NODES answered here, this node's shard applied here,
  // another node's forwarded to it (errors name that node).
  absl::StatusOr<v1::DictReply> Route(const v1::DictRequest& request);

  DictStore* store() { return &store_; }

 private:
  const std::string node_id_;
  const ListDataPlaneNodes nodes_;
  DictStore store_;
  ForwardingService<v1::DictRequest, v1::DictReply> forwarding_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_AGENT_DICTIONARY_H_
