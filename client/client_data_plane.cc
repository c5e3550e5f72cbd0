#include "client/client_data_plane.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::client {

absl::StatusOr<std::unique_ptr<ClientDataPlane>> ClientDataPlane::Start(
    const ClientDataPlaneOptions& options, std::unique_ptr<agent::PeerDirectory> directory) {
  if (options.peer_id.empty() || directory == nullptr) {
    return absl::InvalidArgumentError("a client data plane needs its peer id and a directory");
  }
  if (options.pool_bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a client data plane needs a pool: ", options.pool_option, " is 0"));
  }
  std::unique_ptr<ClientDataPlane> self(new ClientDataPlane(options));
  self->directory_ = std::move(directory);
  // A client killed between creating its pool and unlinking it left a file
  // whose creator is dead: gone now.
  common::ShmPool::RemoveStale(options.pool_dir, kClientPoolPrefix);
  common::ShmPoolOptions popts;
  popts.dir = options.pool_dir;
  popts.name = absl::StrCat(kClientPoolPrefix, getpid(), "-", options.peer_id);
  popts.size_bytes = options.pool_bytes;
  // Lazily backed: a login node's /dev/shm holds only what tasks used.
  popts.reserve = false;
  absl::StatusOr<std::unique_ptr<common::ShmPool>> pool = common::ShmPool::Create(popts);
  if (!pool.ok()) {
    return absl::Status(pool.status().code(),
                        absl::StrCat("the client's pool of ", options.pool_bytes, " bytes (",
                                     options.pool_option, "): ", pool.status().message()));
  }
  self->pool_ = *std::move(pool);
  agent::DataPlaneOptions dopts;
  dopts.node_id = options.peer_id;
  dopts.ucx.name = options.peer_id;
  dopts.request_threads = options.request_threads;
  dopts.call_threads = 1;  // no call handler: agents' Calls are refused
  absl::StatusOr<std::unique_ptr<agent::DataPlane>> plane =
      agent::DataPlane::Start(self->pool_.get(), self->directory_.get(), dopts);
  if (!plane.ok()) {
    return absl::Status(plane.status().code(), absl::StrCat("the client's data plane (UCX): ",
                                                            plane.status().message()));
  }
  self->plane_ = *std::move(plane);
  spdlog::info("client data plane {}: pool {} of {} bytes registered at 0x{:x}", options.peer_id,
               self->pool_->path(), self->pool_->capacity_bytes(), self->plane_->pool_address());
  return self;
}

absl::Status ClientDataPlane::UnlinkPoolFile() {
  if (unlinked_) return absl::OkStatus();
  if (unlink(pool_->path().c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(
        absl::StrCat("cannot remove the client's pool file ", pool_->path(), ": ", strerror(errno)));
  }
  unlinked_ = true;
  return absl::OkStatus();
}

ClientDataPlane::~ClientDataPlane() {
  plane_.reset();  // no more pushes into the pool, no more reads of it
  if (pool_ != nullptr) UnlinkPoolFile().IgnoreError();  // never left behind
  pool_.reset();
  directory_.reset();
}

}  // namespace dragon::client
