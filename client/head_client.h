// A small synchronous client for HeadService's unary RPCs (everything except
// the Session stream, which belongs to dragon_parsl). Every call has a
// deadline so that a caller never hangs on a head that does not answer, and
// every failure comes back as an absl::Status whose message a user can act on.
#ifndef DRAGON_CLIENT_HEAD_CLIENT_H_
#define DRAGON_CLIENT_HEAD_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/head_locator.h"
#include "proto/head.grpc.pb.h"

namespace dragon::client {

inline constexpr absl::Duration kDefaultTimeout = absl::Seconds(10);
// How long dragond waits for the agents of an AddNodes to register
// (daemon/serve.cc); AddNodes waits that much longer than other calls.
inline constexpr absl::Duration kAddNodesWait = absl::Seconds(60);

// What a failed call was, for the message that explains it.
struct RpcErrorContext {
  std::string address;
  const char* method = "";
  absl::Duration timeout = kDefaultTimeout;
  bool channel_was_ready = false;  // the connection was up when the call failed
  uint64_t task_id = 0;            // NOT_FOUND names this task (0 = none)
  std::string node_id;             // NOT_FOUND names this node (empty = none)
  bool sent_token = false;
  // Where the token came from, or why there was none (HeadLocation.token_source).
  std::string token_source;
};

class HeadClient {
 public:
  // Opens a channel to location.address through common::MakeChannel, with
  // location's token (added to every call) and TLS CA. The channel connects
  // on the first RPC, within that RPC's deadline; nothing here blocks.
  // Fails for a malformed address, a non-positive timeout, or a TLS CA file
  // that cannot be read.
  static absl::StatusOr<std::unique_ptr<HeadClient>> Create(
      const common::HeadLocation& location, absl::Duration timeout = kDefaultTimeout);

  // Waits up to the timeout for the channel to be connected. Fails with
  // "cannot reach dragond at ADDR: ..." when the head does not answer; the
  // RPCs below do the same on their own, so calling this is optional.
  absl::Status Connect();

  absl::StatusOr<dragon::v1::StatusReply> Status();
  absl::StatusOr<dragon::v1::ListNodesReply> ListNodes();
  absl::StatusOr<dragon::v1::ListTasksReply> ListTasks(dragon::v1::TaskState state,
                                                       uint32_t limit);
  // NotFound "no task ID in this run" for an id the head does not know.
  absl::StatusOr<dragon::v1::TaskInfo> GetTask(uint64_t task_id);
  absl::StatusOr<dragon::v1::CancelReply> Cancel(uint64_t task_id);
  // A task's output, read by the agent that ran it (dragonctl logs): an MPI
  // job's per-rank files (`rank`: one rank only), an executable's captured
  // tails, a Python task's worker log lines; each file's last `max_bytes`
  // (0: the head's default, 1 MiB).
  absl::StatusOr<dragon::v1::TaskLogsReply> TaskLogs(uint64_t task_id, std::optional<int32_t> rank,
                                                     uint64_t max_bytes);
  // Stops (drain) or resumes (!drain) placement of tasks on `node_id`; the
  // node as it is afterwards. NotFound (the head's "no node 'ID' in this
  // run") for a node the head does not know.
  absl::StatusOr<dragon::v1::NodeInfo> DrainNode(const std::string& node_id, bool drain);
  // Starts agents on `hosts` (a head whose launcher can: ssh) and returns
  // once each is ready or failed: the head waits up to kAddNodesWait for
  // them, so this call's deadline is the timeout plus that. A host whose
  // agent did not start is in the reply's `failed` ("HOST: why"), not an
  // error; a head that cannot add nodes at all, or a host it refuses (a bad
  // name, an agent already running there), is.
  absl::StatusOr<dragon::v1::AddNodesReply> AddNodes(const std::vector<std::string>& hosts);
  // Drains `node_id` and has its agent leave once its running tasks end
  // (the node is then "gone"); the node as it is right after the request.
  // NotFound as for DrainNode; FailedPrecondition for a node that is lost
  // or gone already.
  absl::StatusOr<dragon::v1::NodeInfo> RemoveNode(const std::string& node_id);
  absl::Status Shutdown();

  const std::string& address() const { return address_; }

 private:
  HeadClient(std::string address, absl::Duration timeout, std::shared_ptr<grpc::Channel> channel,
             bool sent_token, std::string token_source);

  // Sets the deadline every call gets (the timeout, plus `extra`).
  void Prepare(grpc::ClientContext* context,
               absl::Duration extra = absl::ZeroDuration()) const;
  // Turns a failed call into a message naming the head and the cause.
  // `task_id` (0 = none) and `node_id` let NOT_FOUND say what was unknown.
  absl::Status Translate(const grpc::Status& status, const char* method, uint64_t task_id,
                         const std::string& node_id = "") const;

  std::string address_;
  absl::Duration timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<dragon::v1::HeadService::Stub> stub_;
  bool sent_token_;
  std::string token_source_;
};

// The message for a gRPC failure; exposed so that the mapping can be
// unit-tested without a server. UNAUTHENTICATED keeps the head's text (it
// says whether the token was missing or wrong and where tokens are read
// from) and adds where this client's token came from, or why it had none.
absl::Status TranslateRpcError(const grpc::Status& status, const RpcErrorContext& context);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_HEAD_CLIENT_H_
