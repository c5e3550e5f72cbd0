#include "agent/data_service.h"

#include <dirent.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "proto/agent.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

constexpr char kSocketSuffix[] = ".sock";

bool IsSocket(const std::string& path, struct stat* st) {
  return lstat(path.c_str(), st) == 0 && S_ISSOCK(st->st_mode);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

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

class DataService::Impl final : public v1::AgentData::Service {
 public:
  Impl(BlockMover* mover, DictHandler dict, ChannelHandler channel)
      : mover_(mover), dict_(std::move(dict)), channel_(std::move(channel)) {}

  grpc::Status Pull(grpc::ServerContext*, const v1::BlockTransfer* request,
                    v1::BlockTransferred* reply) override {
    return Transfer(*request, reply, /*push=*/false);
  }
  grpc::Status Push(grpc::ServerContext*, const v1::BlockTransfer* request,
                    v1::BlockTransferred* reply) override {
    return Transfer(*request, reply, /*push=*/true);
  }
  grpc::Status Dict(grpc::ServerContext*, const v1::DictRequest* request,
                    v1::DictReply* reply) override {
    if (!dict_) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                          "this agent holds no Dictionary shards (no handler)");
    }
    absl::StatusOr<v1::DictReply> answer = dict_(*request);
    if (!answer.ok()) return ToGrpcStatus(answer.status());
    *reply = *std::move(answer);
    return grpc::Status::OK;
  }
  grpc::Status Channel(grpc::ServerContext*, const v1::ChannelRequest* request,
                       v1::ChannelReply* reply) override {
    if (!channel_) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                          "this agent serves no channels (no handler)");
    }
    absl::StatusOr<v1::ChannelReply> answer = channel_(*request);
    if (!answer.ok()) return ToGrpcStatus(answer.status());
    *reply = *std::move(answer);
    return grpc::Status::OK;
  }

 private:
  grpc::Status Transfer(const v1::BlockTransfer& request, v1::BlockTransferred* reply, bool push) {
    if (absl::Status s = ValidateTransfer(request); !s.ok()) return ToGrpcStatus(s);
    const common::BlockRef ref = *common::BlockRef::Decode(request.ref());
    const absl::Duration timeout = absl::Milliseconds(request.timeout_ms());
    absl::StatusOr<common::BlockRef> moved =
        push ? mover_->Push(request.node_id(), ref, request.size(), request.owner_pid(), timeout)
             : mover_->Pull(request.node_id(), ref, request.size(), request.owner_pid(), timeout);
    if (!moved.ok()) {
      spdlog::debug("AgentData.{} of {} bytes with node {} failed: {}", push ? "Push" : "Pull",
                    request.size(), request.node_id(), moved.status().ToString());
      return ToGrpcStatus(moved.status());
    }
    reply->set_ref(moved->Encode());
    return grpc::Status::OK;
  }

  BlockMover* mover_;
  DictHandler dict_;
  ChannelHandler channel_;
};

absl::StatusOr<std::unique_ptr<DataService>> DataService::Start(const std::string& socket_path,
                                                                BlockMover* mover,
                                                                DictHandler dict,
                                                                ChannelHandler channel) {
  if (socket_path.size() >= sizeof(sockaddr_un::sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data socket path ", socket_path, " is ", socket_path.size(),
        " bytes, more than a Unix socket's ", sizeof(sockaddr_un::sun_path) - 1,
        " (a shorter --shm-dir or node id)"));
  }
  // A dead agent's socket at this path (its pool was adopted) is replaced.
  struct stat st {};
  if (IsSocket(socket_path, &st) && unlink(socket_path.c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot remove the old data socket ", socket_path, ": ", std::strerror(errno)));
  }
  auto impl = std::make_unique<Impl>(mover, std::move(dict), std::move(channel));
  grpc::ServerBuilder builder;
  int listening = 0;
  builder.AddListeningPort(absl::StrCat("unix:", socket_path), grpc::InsecureServerCredentials(),
                           &listening);
  builder.RegisterService(impl.get());
  // No receive limit (gRPC's default is 4 MiB): only this user's processes of
  // this node can send, and Dictionary values (Dict PUT) may be large.
  builder.SetMaxReceiveMessageSize(-1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || listening == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve AgentData on unix:", socket_path, " (see the log for gRPC's reason)"));
  }
  // Same user only (see the header). gRPC creates the file with the umask's
  // mode (connecting needs write permission, which the usual umask 022
  // already denies others); 0600 whatever the umask, before the path is
  // published (Register, after Start returns).
  if (chmod(socket_path.c_str(), 0600) != 0) {
    const std::string why = std::strerror(errno);
    server->Shutdown();
    unlink(socket_path.c_str());
    return absl::FailedPreconditionError(
        absl::StrCat("cannot make data socket ", socket_path, " mode 0600: ", why));
  }
  spdlog::info("AgentData service on unix:{} (mode 0600)", socket_path);
  return std::unique_ptr<DataService>(
      new DataService(socket_path, std::move(impl), std::move(server)));
}

DataService::DataService(std::string socket_path, std::unique_ptr<Impl> impl,
                         std::unique_ptr<grpc::Server> server)
    : socket_path_(std::move(socket_path)), impl_(std::move(impl)), server_(std::move(server)) {}

DataService::~DataService() {
  // Calls in flight get a short grace, then are cancelled: the data plane
  // they use is torn down next.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  struct stat st {};
  if (IsSocket(socket_path_, &st)) unlink(socket_path_.c_str());
}

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
