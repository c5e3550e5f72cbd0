// DataPlane's serving side: the threads that take other agents' Push
// requests (data_plane_messages.h), Pull the block from the requester, and
// answer with the new block or why not.
#include <errno.h>
#include <signal.h>

#include <algorithm>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/data_plane.h"
#include "agent/data_plane_impl.h"
#include "agent/data_plane_messages.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

namespace messages = data_plane_messages;
using common::BlockRef;

}  // namespace

absl::Status CheckOwnerAlive(pid_t owner, const std::string& node_id) {
  if (owner <= 0 || kill(owner, 0) == 0 || errno != ESRCH) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "owner process ", owner, " of the new block is not alive on node ", node_id));
}

void DataPlane::Impl::StartRequestThreads() {
  for (int i = 0; i < options_.request_threads; ++i) {
    request_threads_.emplace_back([this] { ServeRequests(); });
  }
}

void DataPlane::Impl::ServeRequests() {
  PollRequests(messages::kPushRequestTag, "push request",
               [this](absl::string_view message) { Serve(message); },
               [this] { DrainAbandonedReplies(); });
}

void DataPlane::Impl::PollRequests(uint64_t tag, absl::string_view what,
                                   const std::function<void(absl::string_view)>& serve,
                                   const std::function<void()>& idle) {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    absl::StatusOr<std::string> message =
        node_->Receive(tag, kRequestPoll, /*transfer_timeout=*/absl::Seconds(5));
    if (message.ok()) {
      serve(*message);
    } else if (absl::IsDeadlineExceeded(message.status())) {
      idle();  // a moment for the housekeeping
    } else {
      // A request whose sender was lost while it arrived: nobody to answer.
      spdlog::warn("data plane of node {}: receiving a {} failed: {}", options_.node_id,
                   std::string(what), message.status().ToString());
    }
  }
}

void DataPlane::Impl::DrainAbandonedReplies() {
  // One thread at a time; the others have requests to wait for.
  if (!abandoned_mu_.TryLock()) return;
  const absl::Time now = absl::Now();
  for (auto it = abandoned_replies_.begin(); it != abandoned_replies_.end();) {
    const uint64_t request_id = it->first;
    absl::StatusOr<std::string> late =
        node_->Receive(messages::PushReplyTag(request_id), absl::ZeroDuration());
    if (!late.ok()) {
      it = now - it->second > kAbandonedWatch ? abandoned_replies_.erase(it) : std::next(it);
      continue;
    }
    it = abandoned_replies_.erase(it);
    absl::StatusOr<BlockRef> block = messages::DecodePushReply(*late);
    if (block.ok()) {
      // Rare: the server stops short of our deadline (ReplyMargin), so only
      // a slow answer gets here. The block stays its owner's until that
      // process frees it or dies (the janitor reclaims it then).
      spdlog::warn("data plane of node {}: push request {} was answered after it gave up: {} "
                   "was made for it on the other node",
                   options_.node_id, request_id, DescribeBlock(*block));
    } else {
      spdlog::debug("data plane of node {}: late answer to push request {}: {}",
                    options_.node_id, request_id, block.status().ToString());
    }
  }
  abandoned_mu_.Unlock();
}

void DataPlane::Impl::Serve(absl::string_view message) {
  absl::StatusOr<messages::PushRequest> request = messages::DecodePushRequest(message);
  if (!request.ok()) {
    // Without a well-formed request there is no requester to answer.
    spdlog::warn("data plane of node {}: dropped a push request: {}", options_.node_id,
                 request.status().ToString());
    return;
  }
  const absl::Time deadline = absl::Now() + request->timeout;
  spdlog::debug("data plane of node {}: push request {} from node {}: {} bytes of {} for pid {}",
                options_.node_id, request->request_id, request->node_id, request->size,
                DescribeBlock(request->ref), request->owner);
  absl::StatusOr<BlockRef> result = absl::UnknownError("not served");
  if (absl::Status alive = CheckOwnerAlive(request->owner, options_.node_id); !alive.ok()) {
    result = alive;
  } else if (request->timeout <= absl::ZeroDuration()) {
    result = absl::DeadlineExceededError("the request came with no time left");
  } else {
    result = Pull(request->node_id, request->ref, request->size, request->owner, request->timeout);
  }
  if (result.ok() && absl::Now() >= deadline) {
    // The requester is about to give up: an answer now could arrive after it
    // stopped waiting, and the block would belong to nobody who knows of it.
    Discard(*result, "pulled too late for its requester");
    result = absl::DeadlineExceededError(
        absl::StrCat("pulled too late: the requester allowed ",
                     absl::FormatDuration(request->timeout)));
  }
  Reply(request->node_id, request->request_id, result, deadline);
}

void DataPlane::Impl::Reply(const std::string& requester, uint64_t request_id,
                            const absl::StatusOr<BlockRef>& result, absl::Time deadline) {
  const absl::Duration timeout = std::max(deadline - absl::Now(), kAnswerMinTimeout);
  absl::StatusOr<Connection> connection = ConnectionTo(requester);
  absl::Status sent = connection.status();
  if (connection.ok()) {
    sent = node_->Send(connection->peer, messages::PushReplyTag(request_id),
                       messages::EncodePushReply(result), timeout);
  }
  if (sent.ok()) {
    spdlog::debug("data plane of node {}: answered push request {} of node {}: {}",
                  options_.node_id, request_id, requester,
                  result.ok() ? DescribeBlock(*result) : result.status().ToString());
    return;
  }
  if (connection.ok()) DropIfUnusable(requester, *connection);
  spdlog::warn("data plane of node {}: cannot answer push request {} of node {}: {}",
               options_.node_id, request_id, requester, sent.ToString());
  if (result.ok()) Discard(*result, "its requester cannot be told of it");
}

}  // namespace dragon::agent
