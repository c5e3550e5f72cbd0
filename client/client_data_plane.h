// ClientDataPlane: a workflow on a host without an agent (a login node) as a
// data-plane peer of the agents (issue 14, "UCX between nodes": its large
// arguments go to the agent that runs the task over UCX, never through the
// head).
//
// It owns a private pool (common::ShmPool, lazily backed) and the same
// DataPlane the agents run (agent/data_plane.h) on it, with the head's node
// list as its directory. The client writes a task's large arguments into a
// block of its pool and names itself (its peer id) in the envelope; the
// worker's agent pulls the block over UCX (this data plane's fetch threads
// send it from this pool). A worker's large result is pushed: its agent asks this data
// plane to pull the block into this pool, owned by the client.
//
// The pool's file is removed as soon as the client has mapped it
// (UnlinkPoolFile): the memory lives as long as the mappings, so a killed
// client leaves nothing in /dev/shm. What the agents need to reach it goes to
// the head with PublishDataPeer (done by the caller, on its session).
#ifndef DRAGON_CLIENT_CLIENT_DATA_PLANE_H_
#define DRAGON_CLIENT_CLIENT_DATA_PLANE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/data_plane.h"
#include "common/shm_pool.h"

namespace dragon::client {

// The prefix of the client pools' file names, for RemoveStale.
inline constexpr char kClientPoolPrefix[] = "dragon-client-pool-";

struct ClientDataPlaneOptions {
  // The id agents know this client by ("client-<session id>", the head's
  // PublishDataPeer answer); names it in its requests and UCX's logs.
  std::string peer_id;
  uint64_t pool_bytes = 1ull << 30;
  std::string pool_dir = "/dev/shm";
  // The option that sets pool_bytes, named in errors about the pool's size.
  std::string pool_option = "DragonExecutor(client_pool_mb=...)";
  // Threads that serve the agents' pushes of results into this pool.
  int request_threads = 4;
};

class ClientDataPlane {
 public:
  // Creates the pool (its file still in pool_dir: UnlinkPoolFile removes it
  // once the caller has mapped it too) and starts the DataPlane on it with
  // `directory` (the head's node list; must outlive this). Errors name the
  // part that failed (the pool with its size and option, or UCX) and leave
  // nothing running or on disk.
  static absl::StatusOr<std::unique_ptr<ClientDataPlane>> Start(
      const ClientDataPlaneOptions& options, std::unique_ptr<agent::PeerDirectory> directory);
  // Stops the DataPlane (its threads joined), then unmaps the pool.
  ~ClientDataPlane();
  ClientDataPlane(const ClientDataPlane&) = delete;
  ClientDataPlane& operator=(const ClientDataPlane&) = delete;

  // Removes the pool's file; the memory stays for every mapping. Idempotent.
  absl::Status UnlinkPoolFile();

  const std::string& peer_id() const { return options_.peer_id; }
  const std::string& pool_path() const { return pool_->path(); }
  common::ShmPool* pool() { return pool_.get(); }
  agent::DataPlane* plane() { return plane_.get(); }
  // What PublishDataPeer sends.
  const std::string& ucx_address() const { return plane_->ucx_address(); }
  const std::string& pool_rkey() const { return plane_->pool_rkey(); }
  uint64_t pool_address() const { return plane_->pool_address(); }
  uint64_t pool_bytes() const { return pool_->capacity_bytes(); }

 private:
  explicit ClientDataPlane(ClientDataPlaneOptions options) : options_(std::move(options)) {}

  const ClientDataPlaneOptions options_;
  std::unique_ptr<agent::PeerDirectory> directory_;
  std::unique_ptr<common::ShmPool> pool_;
  std::unique_ptr<agent::DataPlane> plane_;
  bool unlinked_ = false;
};

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_CLIENT_DATA_PLANE_H_
