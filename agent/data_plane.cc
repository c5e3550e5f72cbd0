// DataPlane: start and stop, connections to other nodes' agents, Pull and
// Push (the serving side of Push is in data_plane_requests.cc).
#include "agent/data_plane.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/data_plane_impl.h"
#include "agent/data_plane_messages.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

namespace messages = data_plane_messages;
using common::BlockRef;

bool IsPeerLoss(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsFailedPrecondition(status);
}

// How much sooner than the requester the serving agent must be done with a
// Push: its answer has to travel back before the requester stops waiting.
// A block pulled after that is freed rather than announced too late.
absl::Duration ReplyMargin(absl::Duration remaining) {
  return std::min(remaining / 10, absl::Milliseconds(500));
}

absl::Status InvalidSize(absl::string_view what, uint64_t size, const BlockRef& ref,
                         const std::string& node_id) {
  if (size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot ", what, " 0 bytes of ", DescribeBlock(ref), " of node ", node_id));
  }
  return absl::InvalidArgumentError(absl::StrCat("cannot ", what, " ", size, " bytes of ",
                                                 DescribeBlock(ref), " of node ", node_id,
                                                 ": the block holds only ", ref.length, " bytes"));
}

}  // namespace

std::string DescribeBlock(const BlockRef& ref) {
  return absl::StrCat("block (offset ", ref.offset, ", ", ref.length, " bytes, generation ",
                      ref.generation, ")");
}

absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

DataPlane::Impl::Impl(common::ShmPool* pool, PeerDirectory* directory,
                      const DataPlaneOptions& options, std::unique_ptr<common::UcxNode> node,
                      std::unique_ptr<common::UcxMemoryRegion> region)
    : pool_(pool),
      directory_(directory),
      options_(options),
      node_(std::move(node)),
      region_(std::move(region)) {}

DataPlane::Impl::~Impl() {
  std::map<std::string, Connection> connections;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    connections.swap(connections_);
  }
  // Disconnecting fails at once whatever a request or fetch thread is
  // waiting on (a Fetch from its requester, the send of an answer or of
  // data); the threads then see stopping_ within one receive timeout.
  for (const auto& [node_id, connection] : connections) {
    node_->Disconnect(connection.peer).IgnoreError();  // a close forced by its timeout is fine here
  }
  for (std::thread& thread : request_threads_) thread.join();
  for (std::thread& thread : fetch_threads_) thread.join();
  StopCallThreads();
  for (std::thread& thread : call_threads_) thread.join();
  region_.reset();  // before the node, as UcxMemoryRegion requires
  node_.reset();
  spdlog::info("data plane of node {} stopped", options_.node_id);
}

absl::Time DataPlane::Impl::DeadlineOf(absl::Duration timeout) const {
  return absl::Now() + (timeout > absl::ZeroDuration() ? timeout : options_.default_timeout);
}

absl::StatusOr<DataPlane::Impl::Connection> DataPlane::Impl::ConnectionTo(
    const std::string& node_id) {
  bool refresh = false;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return absl::UnavailableError(
          absl::StrCat("the data plane of node ", options_.node_id, " is stopping"));
    }
    auto found = connections_.find(node_id);
    if (found != connections_.end()) return found->second;
    refresh = stale_.count(node_id) > 0;
  }
  // Outside mu_: the directory may ask the head.
  absl::StatusOr<PeerInfo> info = directory_->Lookup(node_id, refresh);
  if (!info.ok()) return info.status();
  return Install(node_id, *info);
}

absl::StatusOr<DataPlane::Impl::Connection> DataPlane::Impl::Install(const std::string& node_id,
                                                                     const PeerInfo& info) {
  absl::StatusOr<common::UcxPeer> peer = node_->Connect(info.ucx_address, node_id);
  if (!peer.ok()) return WithContext(peer.status(), absl::StrCat("connecting to node ", node_id));
  Connection fresh{info, *peer};
  fresh.info.node_id = node_id;  // what errors name, whatever the directory filled in
  std::optional<Connection> theirs;
  bool again = false;
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      refused = absl::UnavailableError(
          absl::StrCat("the data plane of node ", options_.node_id, " is stopping"));
    } else if (auto [at, inserted] = connections_.try_emplace(node_id, fresh); !inserted) {
      theirs = at->second;
    } else {
      again = stale_.erase(node_id) > 0;
    }
  }
  if (!refused.ok() || theirs.has_value()) {
    node_->Disconnect(*peer).IgnoreError();  // never used: nothing to flush
    if (!refused.ok()) return refused;
    return *theirs;
  }
  spdlog::info("data plane of node {}: {} node {}", options_.node_id,
               again ? "connected again to" : "connected to", node_id);
  return fresh;
}

bool DataPlane::Impl::DropIfUnusable(const std::string& node_id, const Connection& connection) {
  const absl::Status usable = node_->PeerStatus(connection.peer);
  if (usable.ok()) return false;
  bool forgotten = false;
  {
    absl::MutexLock lock(&mu_);
    auto found = connections_.find(node_id);
    if (found != connections_.end() && found->second.peer == connection.peer) {
      connections_.erase(found);
      stale_.insert(node_id);
      forgotten = true;
    }
  }
  if (forgotten) {
    spdlog::info("data plane of node {}: lost node {}: {}", options_.node_id, node_id,
                 std::string(usable.message()));
    node_->Disconnect(connection.peer).IgnoreError();  // lost: nothing left to flush
  }
  return true;
}

std::optional<absl::StatusOr<DataPlane::Impl::Connection>> DataPlane::Impl::RetryAfterLoss(
    const std::string& node_id, absl::Time deadline, const Connection& failed,
    const absl::Status& error) {
  if (!DropIfUnusable(node_id, failed)) return std::nullopt;
  if (!IsPeerLoss(error) || absl::Now() >= deadline) return std::nullopt;
  // Lost. Only a restarted agent (the node published elsewhere) is worth a
  // second try within this call; the same address is the same dead peer.
  absl::StatusOr<PeerInfo> fresh = directory_->Lookup(node_id, /*refresh=*/true);
  if (!fresh.ok() || fresh->ucx_address == failed.info.ucx_address) return std::nullopt;
  spdlog::info("data plane of node {}: node {} has a new address (its agent restarted?); "
               "trying again there",
               options_.node_id, node_id);
  return Install(node_id, *fresh);
}

void DataPlane::Impl::Discard(const BlockRef& ref, absl::string_view why) {
  absl::Status freed = pool_->Free(ref);
  if (!freed.ok()) {
    spdlog::warn("data plane of node {}: cannot free {} ({}): {}", options_.node_id,
                 DescribeBlock(ref), std::string(why), freed.ToString());
    return;
  }
  spdlog::debug("data plane of node {}: freed {}: {}", options_.node_id, DescribeBlock(ref),
                std::string(why));
}

absl::StatusOr<BlockRef> DataPlane::Impl::Pull(const std::string& node_id, const BlockRef& ref,
                                               uint64_t size, pid_t owner,
                                               absl::Duration timeout) {
  if (size == 0 || size > ref.length) return InvalidSize("pull", size, ref, node_id);
  const absl::Time deadline = DeadlineOf(timeout);
  absl::StatusOr<BlockRef> pulled =
      node_id == options_.node_id
          ? PullLocal(ref, size, owner)
          : OnPeer<BlockRef>(node_id, deadline, [&](const Connection& connection) {
              return PullRemote(connection, ref, size, owner, deadline);
            });
  if (!pulled.ok()) {
    spdlog::warn("data plane of node {}: pull of {} bytes of {} of node {} failed: {}",
                 options_.node_id, size, DescribeBlock(ref), node_id, pulled.status().ToString());
  }
  return pulled;
}

absl::StatusOr<BlockRef> DataPlane::Impl::PullLocal(const BlockRef& ref, uint64_t size,
                                                    pid_t owner) {
  absl::StatusOr<absl::Span<char>> source = pool_->Resolve(ref);
  if (!source.ok()) return source.status();
  absl::StatusOr<BlockRef> copy = pool_->Allocate(size, absl::ZeroDuration(), owner);
  if (!copy.ok()) return copy.status();
  absl::StatusOr<absl::Span<char>> target = pool_->Resolve(*copy);
  if (!target.ok()) {
    Discard(*copy, "cannot resolve it");
    return target.status();
  }
  std::memcpy(target->data(), source->data(), size);
  spdlog::debug("data plane of node {}: copied {} bytes of {} into {} (local)", options_.node_id,
                size, DescribeBlock(ref), DescribeBlock(*copy));
  return *copy;
}

absl::StatusOr<BlockRef> DataPlane::Impl::PullRemote(const Connection& connection,
                                                     const BlockRef& ref, uint64_t size,
                                                     pid_t owner, absl::Time deadline) {
  const std::string& node_id = connection.info.node_id;
  const std::string what =
      absl::StrCat("pull of ", size, " bytes of ", DescribeBlock(ref), " from node ", node_id);
  const absl::Time started = absl::Now();
  // A forged or stale reference must not make the other agent's UCX read
  // outside the region it registered.
  const uint64_t pool_bytes = connection.info.pool_bytes;
  if (pool_bytes > 0 && (ref.offset > pool_bytes || size > pool_bytes - ref.offset)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": past the end of its pool (",
                                                   pool_bytes, " bytes)"));
  }
  // A Send that times out closes its connection: never start one without time.
  if (started >= deadline) return absl::DeadlineExceededError(what + ": no time left");
  absl::StatusOr<BlockRef> local = pool_->Allocate(size, absl::ZeroDuration(), owner);
  if (!local.ok()) return local.status();
  absl::StatusOr<absl::Span<char>> target = pool_->Resolve(*local);
  if (!target.ok()) {
    Discard(*local, "cannot resolve it");
    return target.status();
  }
  // Allocating and mapping a large new block takes a while (64 MiB: ~20 ms).
  const absl::Duration remaining = deadline - absl::Now();
  if (remaining <= absl::ZeroDuration()) {
    Discard(*local, "no time left to fill it");
    return absl::DeadlineExceededError(what + ": no time left after allocating its block");
  }
  absl::Status got = FetchRemote(connection, ref, size, *target, deadline);
  if (!got.ok()) {
    Discard(*local, "its pull failed");
    return WithContext(got, what);
  }
  spdlog::debug("data plane of node {}: pulled {} bytes of {} from node {} into {} in {}",
                options_.node_id, size, DescribeBlock(ref), node_id, DescribeBlock(*local),
                absl::FormatDuration(absl::Now() - started));
  return *local;
}

absl::StatusOr<BlockRef> DataPlane::Impl::Push(const std::string& node_id, const BlockRef& ref,
                                               uint64_t size, pid_t owner,
                                               absl::Duration timeout) {
  if (size == 0 || size > ref.length) return InvalidSize("push", size, ref, node_id);
  const absl::Time deadline = DeadlineOf(timeout);
  // The block must be ours now: the other agent would otherwise copy
  // whatever the range holds.
  absl::StatusOr<BlockRef> pushed = absl::UnknownError("not pushed");
  if (absl::Status source = pool_->Resolve(ref).status(); !source.ok()) {
    pushed = source;
  } else if (node_id != options_.node_id) {
    pushed = OnPeer<BlockRef>(node_id, deadline, [&](const Connection& connection) {
      return PushRemote(connection, ref, size, owner, deadline);
    });
  } else if (absl::Status alive = CheckOwnerAlive(owner, node_id); !alive.ok()) {
    pushed = alive;
  } else {
    pushed = PullLocal(ref, size, owner);
  }
  if (!pushed.ok()) {
    spdlog::warn("data plane of node {}: push of {} bytes of {} to node {} failed: {}",
                 options_.node_id, size, DescribeBlock(ref), node_id, pushed.status().ToString());
  }
  return pushed;
}

absl::StatusOr<BlockRef> DataPlane::Impl::PushRemote(const Connection& connection,
                                                     const BlockRef& ref, uint64_t size,
                                                     pid_t owner, absl::Time deadline) {
  const std::string& node_id = connection.info.node_id;
  const std::string what =
      absl::StrCat("push of ", size, " bytes of ", DescribeBlock(ref), " to node ", node_id);
  const absl::Time started = absl::Now();
  const absl::Duration remaining = deadline - started;
  // A Send that times out closes its connection: never start one without time.
  if (remaining <= absl::ZeroDuration()) return absl::DeadlineExceededError(what + ": no time left");
  messages::PushRequest request;
  request.request_id = messages::NextRequestId();
  request.node_id = options_.node_id;
  request.ref = ref;
  request.size = size;
  request.owner = owner;
  request.timeout = remaining - ReplyMargin(remaining);
  absl::Status sent =
      node_->Send(connection.peer, messages::kPushRequestTag,
                  messages::EncodePushRequest(request), remaining);
  if (!sent.ok()) return WithContext(sent, what);
  absl::StatusOr<std::string> reply = node_->Receive(
      connection.peer, messages::PushReplyTag(request.request_id), deadline - absl::Now());
  if (!reply.ok()) {
    if (absl::IsDeadlineExceeded(reply.status())) {
      absl::MutexLock lock(&abandoned_mu_);
      abandoned_replies_[request.request_id] = absl::Now();
    }
    return WithContext(reply.status(), what + ": waiting for the answer");
  }
  absl::StatusOr<BlockRef> pushed = messages::DecodePushReply(*reply);
  if (!pushed.ok()) return WithContext(pushed.status(), absl::StrCat("node ", node_id));
  spdlog::debug("data plane of node {}: pushed {} bytes of {} to node {}, now its {}, in {}",
                options_.node_id, size, DescribeBlock(ref), node_id, DescribeBlock(*pushed),
                absl::FormatDuration(absl::Now() - started));
  return pushed;
}

absl::StatusOr<std::unique_ptr<DataPlane>> DataPlane::Start(common::ShmPool* pool,
                                                            PeerDirectory* peers,
                                                            const DataPlaneOptions& options) {
  if (pool == nullptr || peers == nullptr) {
    return absl::InvalidArgumentError("a data plane needs a shared-memory pool and a directory");
  }
  if (options.node_id.empty()) {
    return absl::InvalidArgumentError("a data plane needs its node's id (DataPlaneOptions.node_id)");
  }
  if (options.request_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("DataPlaneOptions.request_threads must be at least 1, not ",
                     options.request_threads));
  }
  if (options.fetch_threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DataPlaneOptions.fetch_threads must be at least 1, not ", options.fetch_threads));
  }
  if (options.call_threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DataPlaneOptions.call_threads must be at least 1, not ", options.call_threads));
  }
  absl::StatusOr<std::unique_ptr<common::UcxNode>> node = common::UcxNode::Create(options.ucx);
  if (!node.ok()) {
    return WithContext(node.status(),
                       absl::StrCat("data plane of node ", options.node_id, ": opening UCX"));
  }
  const absl::Span<char> region = pool->data_region();
  absl::StatusOr<std::unique_ptr<common::UcxMemoryRegion>> registered =
      (*node)->RegisterMemory(region.data(), region.size());
  if (!registered.ok()) {
    return WithContext(registered.status(),
                       absl::StrCat("data plane of node ", options.node_id,
                                    ": registering shared-memory pool ", pool->path(), " (",
                                    region.size(), " bytes) with UCX"));
  }
  auto impl = std::make_unique<Impl>(pool, peers, options, *std::move(node), *std::move(registered));
  impl->StartRequestThreads();
  impl->StartFetchThreads();
  impl->StartCallThreads();
  spdlog::info(
      "data plane of node {}: pool {} ({} bytes) registered with UCX, {} push, {} fetch threads",
      options.node_id, pool->path(), region.size(), options.request_threads, options.fetch_threads);
  return std::unique_ptr<DataPlane>(new DataPlane(std::move(impl)));
}

DataPlane::DataPlane(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DataPlane::~DataPlane() = default;

const std::string& DataPlane::ucx_address() const { return impl_->ucx_address(); }
const std::string& DataPlane::pool_rkey() const { return impl_->pool_rkey(); }
uint64_t DataPlane::pool_address() const { return impl_->pool_address(); }

absl::StatusOr<BlockRef> DataPlane::Pull(const std::string& node_id, const BlockRef& ref,
                                         uint64_t size, pid_t owner, absl::Duration timeout) {
  return impl_->Pull(node_id, ref, size, owner, timeout);
}

absl::StatusOr<BlockRef> DataPlane::Push(const std::string& node_id, const BlockRef& ref,
                                         uint64_t size, pid_t owner, absl::Duration timeout) {
  return impl_->Push(node_id, ref, size, owner, timeout);
}

absl::StatusOr<std::string> DataPlane::Call(const std::string& node_id, std::string payload,
                                            absl::Duration timeout) {
  return impl_->Call(node_id, std::move(payload), timeout);
}

}  // namespace dragon::agent
