// The AgentData service (proto/agent.proto) of one agent, for the processes
// of its node (workers, clients): Pull and Push of pool blocks between
// nodes, carried out by the agent's data plane (agent/data_plane.h), and
// Dictionary shard and channel operations when handlers are given.
//
// Served on a Unix socket (by convention the pool's path + ".sock",
// published as Register.data_socket) whose file is mode 0600 before anyone
// can connect: only processes of the agent's user may, which is the whole
// of its access control (no token: a process that can open the socket can
// already open the pool file next to it). The requests and replies are
// proto/agent.proto's messages, carried in the plain frames of
// common/data_socket_frames.h (agent/data_socket_server.h serves them;
// common/data_socket_client.h calls), not gRPC: a Dictionary get or set is
// one such call, and gRPC's HTTP/2 and thread hops made it ~5x slower than
// multiprocessing's Manager. Nothing speaks gRPC on this socket.
#ifndef DRAGON_AGENT_DATA_SERVICE_H_
#define DRAGON_AGENT_DATA_SERVICE_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/data_socket_server.h"
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
// call answers Unimplemented.
using DictHandler = std::function<absl::StatusOr<v1::DictReply>(const v1::DictRequest&)>;
// AgentData.Channel's handler (agent/agent_channels.h); none: Unimplemented.
using ChannelHandler =
    std::function<absl::StatusOr<v1::ChannelReply>(const v1::ChannelRequest&)>;

// Why a BlockTransfer cannot be carried out, naming the field (empty
// node_id, a ref that does not decode, owner_pid <= 0), else OK.
absl::Status ValidateTransfer(const v1::BlockTransfer& request);

class DataService {
 public:
  // Serves `mover` (which must outlive the service) on the Unix socket
  // `socket_path`; an old socket file at that path (a dead agent's) is
  // replaced. Errors name the path: too long for a Unix socket, the server
  // could not listen, chmod failed. `options`: the connection bounds.
  static absl::StatusOr<std::unique_ptr<DataService>> Start(
      const std::string& socket_path, BlockMover* mover, DictHandler dict = nullptr,
      ChannelHandler channel = nullptr, DataSocketServerOptions options = {});
  // Stops the server (a call in a handler finishes first) and removes the
  // socket file.
  ~DataService();
  DataService(const DataService&) = delete;
  DataService& operator=(const DataService&) = delete;

  const std::string& socket_path() const { return server_->socket_path(); }
  // Connections open now.
  int connections() const { return server_->connections(); }

 private:
  class Impl;
  DataService(std::unique_ptr<Impl> impl, std::unique_ptr<DataSocketServer> server);

  std::unique_ptr<Impl> impl_;
  std::unique_ptr<DataSocketServer> server_;  // last: stopped before impl_ goes
};

// Removes the data sockets ("<pool file>.sock") in `dir` whose names start
// with `pool_prefix` and whose pool file is gone (their agent was killed and
// its pool removed); only this user's sockets. Returns how many.
int RemoveOrphanDataSockets(const std::string& dir, const std::string& pool_prefix);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_DATA_SERVICE_H_
