#include "agent/agent_dictionary.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace dragon::agent {

AgentDictionary::AgentDictionary(std::string node_id, common::ShmPool* pool,
                                 ListDataPlaneNodes nodes)
    : node_id_(node_id),
      nodes_(std::move(nodes)),
      store_(pool),
      forwarding_(std::move(node_id), kCallService, "Dictionary",
                  [this](const v1::DictRequest& request) { return store_.Apply(request); }) {}

void AgentDictionary::SetPlane(DataPlane* plane) { forwarding_.SetPlane(plane); }

CallHandler AgentDictionary::Handler() { return forwarding_.Handler(); }

absl::StatusOr<v1::DictReply> AgentDictionary::Route(const v1::DictRequest& request) {
  if (request.op() == v1::DictRequest::NODES) {
    absl::StatusOr<std::vector<std::string>> nodes = nodes_();
    if (!nodes.ok()) return nodes.status();
    v1::DictReply reply;
    for (const std::string& node : *nodes) reply.add_keys(node);
    reply.set_count(nodes->size());
    return reply;
  }
  if (request.node_id().empty()) {
    return absl::InvalidArgumentError("DictRequest.node_id is empty: which node's shard?");
  }
  if (request.node_id() != node_id_ && (request.reader_pid() != 0 || request.value_refs_size() > 0)) {
    // Blocks of this node's pool mean nothing on another node.
    if (request.value_refs_size() > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DictRequest.value_refs name blocks of node ", node_id_, "'s pool; the shard of node ",
          request.node_id(), " cannot take them (send the values inline)"));
    }
    v1::DictRequest inline_values = request;
    inline_values.clear_reader_pid();
    return forwarding_.Route(inline_values, absl::Milliseconds(request.timeout_ms()));
  }
  return forwarding_.Route(request, absl::Milliseconds(request.timeout_ms()));
}

}  // namespace dragon::agent
