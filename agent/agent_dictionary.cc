#include "agent/agent_dictionary.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace dragon::agent {

AgentDictionary::AgentDictionary(std::string node_id, common::ShmPool* pool,
                                 ListDataPlaneNodes nodes)
    : node_id_(std::move(node_id)), nodes_(std::move(nodes)), store_(pool) {}

void AgentDictionary::SetPlane(DataPlane* plane) {
  absl::MutexLock lock(&mu_);
  plane_ = plane;
}

CallHandler AgentDictionary::Handler() {
  return [this](const std::string& from_node, std::string payload) -> absl::StatusOr<std::string> {
    v1::DictRequest request;
    // Past the service byte (see DispatchCalls, agent_data_plane.h).
    if (payload.empty() || payload[0] != kCallService ||
        !request.ParseFromArray(payload.data() + 1, static_cast<int>(payload.size() - 1))) {
      return absl::InvalidArgumentError(
          absl::StrCat("node ", from_node, " sent a Dictionary request that does not parse"));
    }
    if (request.node_id() != node_id_) {
      // Never forwarded twice: a request for a third node's shard is a bug
      // of the sender, not something to pass on.
      return absl::FailedPreconditionError(absl::StrCat(
          "node ", from_node, " forwarded to node ", node_id_, " a request for the shard of node ",
          request.node_id()));
    }
    absl::StatusOr<v1::DictReply> reply = store_.Apply(request);
    if (!reply.ok()) return reply.status();
    return reply->SerializeAsString();
  };
}

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
  if (request.node_id() == node_id_) return store_.Apply(request);
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
  absl::StatusOr<std::string> answer =
      plane->Call(request.node_id(), std::move(payload), absl::Milliseconds(request.timeout_ms()));
  if (!answer.ok()) return answer.status();
  v1::DictReply reply;
  if (!reply.ParseFromString(*answer)) {
    return absl::InternalError(absl::StrCat("node ", request.node_id(),
                                            " answered a Dictionary request with what does not "
                                            "parse as a DictReply"));
  }
  return reply;
}

}  // namespace dragon::agent
