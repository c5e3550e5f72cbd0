#include "agent/agent_data_plane.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

// DataPlane as the service's BlockMover.
class DataPlaneMover : public BlockMover {
 public:
  explicit DataPlaneMover(DataPlane* plane) : plane_(plane) {}
  absl::StatusOr<common::BlockRef> Pull(const std::string& node_id, const common::BlockRef& ref,
                                        uint64_t size, pid_t owner, absl::Duration timeout) override {
    return plane_->Pull(node_id, ref, size, owner, timeout);
  }
  absl::StatusOr<common::BlockRef> Push(const std::string& node_id, const common::BlockRef& ref,
                                        uint64_t size, pid_t owner, absl::Duration timeout) override {
    return plane_->Push(node_id, ref, size, owner, timeout);
  }

 private:
  DataPlane* plane_;
};

absl::Status Prefixed(const char* what, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
}

// Channel calls hold a call thread up to AgentChannels::kMaxWait each (a
// consumer waiting at home): enough threads that many remote consumers and
// the Dictionary's calls do not queue behind each other.
constexpr int kCallThreads = 32;

}  // namespace

CallHandler DispatchCalls(std::map<char, CallHandler> services) {
  return [services = std::move(services)](const std::string& from_node,
                                          std::string payload) -> absl::StatusOr<std::string> {
    if (payload.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("node ", from_node, " sent an empty call"));
    }
    auto service = services.find(payload[0]);
    if (service == services.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("node ", from_node, " sent a call for service byte ",
                       static_cast<int>(static_cast<unsigned char>(payload[0])),
                       ", which this agent does not serve"));
    }
    return service->second(from_node, std::move(payload));
  };
}

absl::StatusOr<std::unique_ptr<AgentDataPlane>> AgentDataPlane::Start(
    common::ShmPool* pool, const AgentDataPlaneOptions& options) {
  std::unique_ptr<AgentDataPlane> self(new AgentDataPlane());
  HeadPeerDirectoryOptions dopts;
  dopts.head_address = options.head_address;
  dopts.token = options.token;
  dopts.tls_ca = options.tls_ca;
  absl::StatusOr<std::unique_ptr<HeadPeerDirectory>> directory = HeadPeerDirectory::Connect(dopts);
  if (!directory.ok()) return Prefixed("the peer directory (the head's node list)", directory.status());
  self->directory_ = *std::move(directory);
  self->dictionary_ = std::make_unique<AgentDictionary>(
      options.node_id, pool, [directory = self->directory_.get()] {
        return directory->NodesWithDataPlane();
      });

  self->channels_ = std::make_unique<AgentChannels>(options.node_id, pool);

  DataPlaneOptions popts;
  popts.node_id = options.node_id;
  popts.ucx.name = options.node_id;
  popts.call_threads = kCallThreads;
  popts.call_handler = DispatchCalls({
      {AgentDictionary::kCallService, self->dictionary_->Handler()},
      {AgentChannels::kCallService, self->channels_->Handler()},
  });
  absl::StatusOr<std::unique_ptr<DataPlane>> plane =
      DataPlane::Start(pool, self->directory_.get(), popts);
  if (!plane.ok()) return plane.status();  // names the node and the UCX call
  self->plane_ = *std::move(plane);
  self->mover_ = std::make_unique<DataPlaneMover>(self->plane_.get());
  self->dictionary_->SetPlane(self->plane_.get());
  self->channels_->SetPlane(self->plane_.get());

  absl::StatusOr<std::unique_ptr<DataService>> service = DataService::Start(
      absl::StrCat(options.pool_path, ".sock"), self->mover_.get(),
      [dictionary = self->dictionary_.get()](const v1::DictRequest& request) {
        return dictionary->Route(request);
      },
      [channels = self->channels_.get()](const v1::ChannelRequest& request) {
        return channels->Route(request);
      });
  if (!service.ok()) return Prefixed("the AgentData service", service.status());
  self->service_ = *std::move(service);
  spdlog::info("data plane of node {}: UCX address {} bytes, pool registered at 0x{:x} (rkey {} "
               "bytes), AgentData on {}",
               options.node_id, self->plane_->ucx_address().size(), self->plane_->pool_address(),
               self->plane_->pool_rkey().size(), self->service_->socket_path());
  return self;
}

AgentDataPlane::~AgentDataPlane() {
  service_.reset();
  mover_.reset();
  plane_.reset();       // no more calls from other agents
  dictionary_.reset();  // frees the shards' values in the pool
  channels_.reset();
  directory_.reset();
}

void AgentDataPlane::FillRegister(v1::Register* reg) const {
  reg->set_ucx_address(plane_->ucx_address());
  reg->set_shm_pool_rkey(plane_->pool_rkey());
  reg->set_shm_pool_address(plane_->pool_address());
  reg->set_data_socket(service_->socket_path());
}

}  // namespace dragon::agent
