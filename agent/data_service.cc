#include "agent/data_service.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

constexpr char kSocketSuffix[] = ".sock";

bool IsSocket(const std::string& path, struct stat* st) {
  return lstat(path.c_str(), st) == 0 && S_ISSOCK(st->st_mode);
}

}  // namespace

absl::Status ValidateTransfer(const v1::BlockTransfer& request) {
  if (request.node_id().empty()) {
    return absl::InvalidArgumentError("BlockTransfer.node_id is empty: which node's pool?");
  }
  if (absl::StatusOr<common::BlockRef> ref = common::BlockRef::Decode(request.ref()); !ref.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("BlockTransfer.ref (", request.ref().size(), " bytes) is not a block "
                     "reference: ", ref.status().message()));
  }
  if (request.owner_pid() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BlockTransfer.owner_pid ", request.owner_pid(), " is not a process id (must be > 0)"));
  }
  return absl::OkStatus();
}

// Decodes a request of `method`, has the right handler answer it, encodes
// the reply.
class DataService::Impl {
 public:
  Impl(BlockMover* mover, DictHandler dict, ChannelHandler channel)
      : mover_(mover), dict_(std::move(dict)), channel_(std::move(channel)) {}

  absl::StatusOr<std::string> Handle(uint8_t method, absl::string_view body) {
    switch (static_cast<common::DataMethod>(method)) {
      case common::DataMethod::kPull:
      case common::DataMethod::kPush: {
        v1::BlockTransfer request;
        if (absl::Status s = Parse(body, &request); !s.ok()) return s;
        absl::StatusOr<v1::BlockTransferred> reply =
            Transfer(request, method == static_cast<uint8_t>(common::DataMethod::kPush));
        if (!reply.ok()) return reply.status();
        return reply->SerializeAsString();
      }
      case common::DataMethod::kDict: {
        if (!dict_) return absl::UnimplementedError("this agent holds no Dictionary shards (no handler)");
        v1::DictRequest request;
        if (absl::Status s = Parse(body, &request); !s.ok()) return s;
        absl::StatusOr<v1::DictReply> reply = dict_(request);
        if (!reply.ok()) return reply.status();
        return reply->SerializeAsString();
      }
      case common::DataMethod::kChannel: {
        if (!channel_) return absl::UnimplementedError("this agent serves no channels (no handler)");
        v1::ChannelRequest request;
        if (absl::Status s = Parse(body, &request); !s.ok()) return s;
        absl::StatusOr<v1::ChannelReply> reply = channel_(request);
        if (!reply.ok()) return reply.status();
        return reply->SerializeAsString();
      }
    }
    return absl::UnimplementedError(absl::StrCat(
        "AgentData has no ", common::DataMethodName(method), " (a newer or older client?)"));
  }

 private:
  template <typename Message>
  static absl::Status Parse(absl::string_view body, Message* out) {
    if (!out->ParseFromArray(body.data(), static_cast<int>(body.size()))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the request (", body.size(), " bytes) is not a serialized ", Message::descriptor()->full_name()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<v1::BlockTransferred> Transfer(const v1::BlockTransfer& request, bool push) {
    if (absl::Status s = ValidateTransfer(request); !s.ok()) return s;
    const common::BlockRef ref = *common::BlockRef::Decode(request.ref());
    const absl::Duration timeout = absl::Milliseconds(request.timeout_ms());
    absl::StatusOr<common::BlockRef> moved =
        push ? mover_->Push(request.node_id(), ref, request.size(), request.owner_pid(), timeout)
             : mover_->Pull(request.node_id(), ref, request.size(), request.owner_pid(), timeout);
    if (!moved.ok()) {
      spdlog::debug("AgentData.{} of {} bytes with node {} failed: {}", push ? "Push" : "Pull",
                    request.size(), request.node_id(), moved.status().ToString());
      return moved.status();
    }
    v1::BlockTransferred reply;
    reply.set_ref(moved->Encode());
    return reply;
  }

  BlockMover* mover_;
  DictHandler dict_;
  ChannelHandler channel_;
};

absl::StatusOr<std::unique_ptr<DataService>> DataService::Start(const std::string& socket_path,
                                                                BlockMover* mover,
                                                                DictHandler dict,
                                                                ChannelHandler channel,
                                                                DataSocketServerOptions options) {
  auto impl = std::make_unique<Impl>(mover, std::move(dict), std::move(channel));
  absl::StatusOr<std::unique_ptr<DataSocketServer>> server = DataSocketServer::Start(
      socket_path,
      [impl = impl.get()](uint8_t method, uint32_t, absl::string_view body) {
        return impl->Handle(method, body);
      },
      options);
  if (!server.ok()) return server.status();
  spdlog::info("AgentData service on unix:{} (mode 0600)", socket_path);
  return std::unique_ptr<DataService>(new DataService(std::move(impl), *std::move(server)));
}

DataService::DataService(std::unique_ptr<Impl> impl, std::unique_ptr<DataSocketServer> server)
    : impl_(std::move(impl)), server_(std::move(server)) {}

DataService::~DataService() = default;

int RemoveOrphanDataSockets(const std::string& dir, const std::string& pool_prefix) {
  DIR* listing = opendir(dir.c_str());
  if (listing == nullptr) return 0;
  int removed = 0;
  while (dirent* entry = readdir(listing)) {
    const std::string name = entry->d_name;
    if (!absl::StartsWith(name, pool_prefix) || !absl::EndsWith(name, kSocketSuffix)) continue;
    const std::string path = absl::StrCat(dir, "/", name);
    const std::string pool = path.substr(0, path.size() - strlen(kSocketSuffix));
    struct stat st {}, pool_st {};
    if (!IsSocket(path, &st) || st.st_uid != geteuid()) continue;
    if (lstat(pool.c_str(), &pool_st) == 0 || errno != ENOENT) continue;  // its pool is there
    if (unlink(path.c_str()) == 0) ++removed;
  }
  closedir(listing);
  return removed;
}

}  // namespace dragon::agent
