// The AgentData gRPC service (proto/agent.proto) of one agent, for the
// processes of its node (workers, clients): Pull and Push of pool blocks
// between nodes, carried out by the agent's data plane (agent/data_plane.h),
// and Dictionary shard and channel operations when handlers are given.
//
// It listens on a Unix socket (`unix:<path>`, by convention the pool's path
// + ".sock", published as Register.data_socket) whose file is made mode 0600
// right after the server starts: only processes of the agent's user may
// connect, which is the whole of its access control (no token: a process
// that can open the socket can already open the pool file next to it).
#ifndef DRAGON_AGENT_DATA_SERVICE_H_
#define DRAGON_AGENT_DATA_SERVICE_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/buddy_allocator.h"
#include "proto/agent.pb.h"

namespace dragon::agent {

// What the service calls; DataPlane through an adapter (agent/agent_data_plane.h),
// a fake in tests. A zero timeout means the mover's default.
class BlockMover {
 public:
  virtual ~BlockMover() = default;
  virtual absl::StatusOr<common::BlockRef> Pull(const std::string& node_id,
                                                const common::BlockRef& ref, uint64_t size,
                                                pid_t owner, absl::Duration timeout) = 0;
  virtual absl::StatusOr<common::BlockRef> Push(const std::string& node_id,
                                                const common::BlockRef& ref, uint64_t size,
                                                pid_t owner, absl::Duration timeout) = 0;
};

// AgentData.Dict's handler (agent/dict_store.h's owner sets it); none: the
// RPC answers Unimplemented.
using DictHandler = std::function<absl::StatusOr<v1::DictReply>(const v1::DictRequest&)>;
// AgentData.Channel's handler (agent/agent_channels.h); none: Unimplemented.
using ChannelHandler =
    std::function<absl::StatusOr<v1::ChannelReply>(const v1::ChannelRequest&)>;

// The gRPC code of an absl status: the same number (the two enumerations
// agree code for code), the message kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Why a BlockTransfer cannot be carried out, naming the field (empty
// node_id, a ref that does not decode, owner_pid <= 0), else OK.
absl::Status ValidateTransfer(const v1::BlockTransfer& request);

class DataService {
 public:
  // Serves `mover` (which must outlive the service) on the Unix socket
  // `socket_path`; an old socket file at that path (a dead agent's) is
  // replaced. Errors name the path: too long for a Unix socket, the server
  // could not listen, chmod failed.
  static absl::StatusOr<std::unique_ptr<DataService>> Start(const std::string& socket_path,
                                                            BlockMover* mover,
                                                            DictHandler dict = nullptr,
                                                            ChannelHandler channel = nullptr);
  // Stops the server (calls in flight are cancelled) and removes the socket file.
  ~DataService();
  DataService(const DataService&) = delete;
  DataService& operator=(const DataService&) = delete;

  const std::string& socket_path() const { return socket_path_; }

 private:
  class Impl;
  DataService(std::string socket_path, std::unique_ptr<Impl> impl,
              std::unique_ptr<grpc::Server> server);

  std::string socket_path_;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<grpc::Server> server_;
};

// Removes the data sockets ("<pool file>.sock") in `dir` whose names start
// with `pool_prefix` and whose pool file is gone (their agent was killed and
// its pool removed); only this user's sockets. Returns how many.
int RemoveOrphanDataSockets(const std::string& dir, const std::string& pool_prefix);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_DATA_SERVICE_H_
