// ForwardingService: how an agent's service for objects that live on one
// node (a channel or Barrier in its pool, a Dictionary's shard) answers a
// request that names that node (issue 14). A process asks its own agent; the
// request is applied here when it names this node, and otherwise sent over
// UCX (DataPlane::Call, the payload led by the service's byte, see
// DispatchCalls in agent_data_plane.h) to the named node's agent, whose
// Handler() applies it there. One copy of that routing for every service,
// so that they parse, refuse and name nodes in their errors alike.
#ifndef DRAGON_AGENT_FORWARDING_SERVICE_H_
#define DRAGON_AGENT_FORWARDING_SERVICE_H_

#include <functional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/data_plane.h"

namespace dragon::agent {

// Request: a protobuf message with node_id() (the node it is for); Reply: a
// protobuf message.
template <typename Request, typename Reply>
class ForwardingService {
 public:
  // The operation on this node's objects.
  using ApplyFn = std::function<absl::StatusOr<Reply>(const Request&)>;

  // `what` names the service in errors ("channel", "Dictionary").
  ForwardingService(std::string node_id, char service, std::string what, ApplyFn apply)
      : node_id_(std::move(node_id)), service_(service), what_(std::move(what)),
        apply_(std::move(apply)) {}

  // The plane that forwards requests for other nodes; until it is set they
  // fail Unavailable (it is started after Handler() is given to it).
  void SetPlane(DataPlane* plane) {
    absl::MutexLock lock(&mu_);
    plane_ = plane;
  }

  // For DataPlaneOptions::call_handler (through DispatchCalls): a request
  // another agent forwarded, for this node; the serialized Reply.
  CallHandler Handler() {
    return [this](const std::string& from_node,
                  std::string payload) -> absl::StatusOr<std::string> {
      Request request;
      // Parsed past the service byte, in place: a channel's message may be 1 GiB.
      if (payload.empty() || payload[0] != service_ ||
          !request.ParseFromArray(payload.data() + 1, static_cast<int>(payload.size() - 1))) {
        return absl::InvalidArgumentError(
            absl::StrCat("node ", from_node, " sent a ", what_, " request that does not parse"));
      }
      payload.clear();
      payload.shrink_to_fit();
      if (request.node_id() != node_id_) {
        // Never forwarded twice: a request for a third node is the sender's
        // bug, not something to pass on.
        return absl::FailedPreconditionError(absl::StrCat("node ", from_node, " forwarded to node ",
                                                          node_id_, " a ", what_,
                                                          " request for node ", request.node_id()));
      }
      absl::StatusOr<Reply> reply = apply_(request);
      if (!reply.ok()) return reply.status();
      return reply->SerializeAsString();
    };
  }

  // Applied here when the request names this node, else forwarded to the
  // node it names, waiting up to `timeout` for the answer (zero: the plane's
  // default). The forwarding's errors name that node.
  absl::StatusOr<Reply> Route(const Request& request, absl::Duration timeout) {
    if (request.node_id() == node_id_) return apply_(request);
    DataPlane* plane;
    {
      absl::MutexLock lock(&mu_);
      plane = plane_;
    }
    if (plane == nullptr) {
      return absl::UnavailableError(absl::StrCat("node ", node_id_, " cannot forward to node ",
                                                 request.node_id(), ": its data plane is not up"));
    }
    std::string payload(1, service_);
    request.AppendToString(&payload);
    absl::StatusOr<std::string> answer =
        plane->Call(request.node_id(), std::move(payload), timeout);
    if (!answer.ok()) return answer.status();
    Reply reply;
    if (!reply.ParseFromString(*answer)) {
      return absl::InternalError(absl::StrCat("node ", request.node_id(), " answered a ", what_,
                                              " request with what does not parse as a ",
                                              Reply::descriptor()->name()));
    }
    return reply;
  }

  const std::string& node_id() const { return node_id_; }

 private:
  const std::string node_id_;
  const char service_;
  const std::string what_;
  const ApplyFn apply_;
  absl::Mutex mu_;
  DataPlane* plane_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_FORWARDING_SERVICE_H_
