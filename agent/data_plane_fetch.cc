// A Pull's transfer, both sides: the requester asks for a block (a Fetch
// request), the block's owner answers whether it can serve it and then sends
// its bytes, which UCX writes straight into the requester's new block.
//
// Why two-sided, and not a UCX Get from the owner's registration of its pool
// (which needs no thread of the owner's): over TCP, UCX has no one-sided
// read and emulates a Get with messages that the owner's UCX answers inside
// its progress. UCX 1.13 (Debian bookworm's) aborts the whole owner process
// (ucs_fatal "unexpected error" in ucp_request_try_send) when such an answer
// cannot be sent because the requester has just died: a killed agent could
// take down the agent or the login workflow it was pulling from. Tagged
// messages report the same failure as an error of the send, which the owner
// logs and survives. The cost: a thread of the owner's wakes for each Pull,
// and a large block's data follows a small answer (a small block's comes in
// the answer).
#include <algorithm>
#include <cstring>
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

// How long the data of a Fetch that stopped waiting may take to arrive
// whole once it has begun to (a 1 GiB block: ~25 s over the test bed's TCP).
constexpr absl::Duration kLateDataTransferTimeout = absl::Seconds(60);

}  // namespace

void DataPlane::Impl::StartFetchThreads() {
  for (int i = 0; i < options_.fetch_threads; ++i) {
    fetch_threads_.emplace_back([this] { ServeFetches(); });
  }
}

absl::Status DataPlane::Impl::FetchRemote(const Connection& connection, const BlockRef& ref,
                                          uint64_t size, absl::Span<char> target,
                                          absl::Time deadline) {
  const std::string& node_id = connection.info.node_id;
  const absl::Duration remaining = deadline - absl::Now();
  // A Send that times out closes its connection: never start one without time.
  if (remaining <= absl::ZeroDuration()) return absl::DeadlineExceededError("no time left");
  messages::FetchRequest request;
  request.request_id = messages::NextRequestId();
  request.node_id = options_.node_id;
  request.ref = ref;
  request.size = size;
  // The owner stops short of our deadline, so that its answer has time to
  // travel back.
  request.timeout = remaining - std::min(remaining / 10, absl::Milliseconds(500));
  absl::Status sent = node_->Send(connection.peer, messages::kFetchRequestTag,
                                  messages::EncodeFetchRequest(request), remaining);
  if (!sent.ok()) return sent;
  absl::StatusOr<std::string> reply = node_->Receive(
      connection.peer, messages::FetchReplyTag(request.request_id), deadline - absl::Now());
  if (!reply.ok()) {
    if (absl::IsDeadlineExceeded(reply.status())) {
      absl::MutexLock lock(&abandoned_fetches_mu_);
      abandoned_fetches_[request.request_id] = AbandonedFetch{absl::Now(), false};
    }
    return WithContext(reply.status(), "waiting for the answer");
  }
  // A refusal comes with the owner's reason (the caller names the node).
  absl::StatusOr<absl::string_view> served = messages::DecodeFetchReply(*reply);
  if (!served.ok()) return served.status();
  if (!served->empty()) {  // small: the data came in the reply
    if (served->size() != size) {
      return absl::DataLossError(absl::StrCat("node ", node_id, " sent ", served->size(),
                                              " bytes where ", size, " were asked for"));
    }
    std::memcpy(target.data(), served->data(), size);
    return absl::OkStatus();
  }
  absl::StatusOr<size_t> received =
      node_->ReceiveInto(messages::FetchDataTag(request.request_id), target.first(size),
                         deadline - absl::Now(), &connection.peer);
  if (!received.ok()) {
    if (absl::IsDeadlineExceeded(received.status())) {
      absl::MutexLock lock(&abandoned_fetches_mu_);
      abandoned_fetches_[request.request_id] = AbandonedFetch{absl::Now(), true};
    }
    return WithContext(received.status(), "receiving the data");
  }
  if (*received != size) {
    return absl::DataLossError(absl::StrCat("node ", node_id, " sent ", *received,
                                            " bytes where ", size, " were asked for"));
  }
  return absl::OkStatus();
}

void DataPlane::Impl::ServeFetches() {
  PollRequests(messages::kFetchRequestTag, "fetch request",
               [this](absl::string_view message) { ServeFetch(message); },
               [this] { DrainAbandonedFetches(); });
}

void DataPlane::Impl::ServeFetch(absl::string_view message) {
  absl::StatusOr<messages::FetchRequest> request = messages::DecodeFetchRequest(message);
  if (!request.ok()) {
    // Without a well-formed request there is no requester to answer.
    spdlog::warn("data plane of node {}: dropped a fetch request: {}", options_.node_id,
                 request.status().ToString());
    return;
  }
  const absl::Time deadline = absl::Now() + request->timeout;
  const BlockRef& ref = request->ref;
  // Only a block allocated now, with the generation the requester names,
  // is sent: a stale or forged reference reads nothing.
  absl::StatusOr<absl::Span<const char>> data = absl::UnknownError("not served");
  if (request->timeout <= absl::ZeroDuration()) {
    data = absl::DeadlineExceededError("the request came with no time left");
  } else if (request->size == 0 || request->size > ref.length) {
    data = absl::InvalidArgumentError(absl::StrCat("cannot send ", request->size, " bytes of ",
                                                   DescribeBlock(ref), " of node ",
                                                   options_.node_id));
  } else if (absl::StatusOr<absl::Span<char>> block = pool_->Resolve(ref); !block.ok()) {
    data = block.status();  // names the pool and the block
  } else {
    data = absl::Span<const char>(block->data(), request->size);
  }
  absl::StatusOr<Connection> connection = ConnectionTo(request->node_id);
  absl::Status sent = connection.status();
  if (connection.ok()) {
    sent = SendFetched(*connection, request->request_id, data, deadline);
    if (!sent.ok()) DropIfUnusable(request->node_id, *connection);
  }
  if (!sent.ok()) {
    spdlog::warn("data plane of node {}: cannot send {} to node {} (fetch {}): {}",
                 options_.node_id, DescribeBlock(ref), request->node_id, request->request_id,
                 sent.ToString());
    return;
  }
  spdlog::debug("data plane of node {}: fetch {} of node {}: {}", options_.node_id,
                request->request_id, request->node_id,
                data.ok() ? absl::StrCat("sent ", request->size, " bytes of ", DescribeBlock(ref))
                          : data.status().ToString());
}

absl::Status DataPlane::Impl::SendFetched(const Connection& requester, uint64_t request_id,
                                          const absl::StatusOr<absl::Span<const char>>& data,
                                          absl::Time deadline) {
  const bool inline_data = data.ok() && data->size() <= messages::kInlineFetchBytes;
  absl::StatusOr<absl::string_view> reply =
      !data.ok()    ? absl::StatusOr<absl::string_view>(data.status())
      : inline_data ? absl::string_view(data->data(), data->size())
                    : absl::string_view();
  absl::Status answered =
      node_->Send(requester.peer, messages::FetchReplyTag(request_id),
                  messages::EncodeFetchReply(reply),
                  std::max(deadline - absl::Now(), kAnswerMinTimeout));
  if (!answered.ok() || !data.ok() || inline_data) return answered;
  // Large data goes by UCX's rendezvous: this waits until the requester has
  // taken it (or stopped waiting and drained it; or is lost).
  return node_->Send(requester.peer, messages::FetchDataTag(request_id),
                     absl::string_view(data->data(), data->size()),
                     std::max(deadline - absl::Now(), kAnswerMinTimeout));
}

void DataPlane::Impl::DrainAbandonedFetches() {
  // One thread at a time; the others have requests to wait for.
  if (!abandoned_fetches_mu_.TryLock()) return;
  const absl::Time now = absl::Now();
  for (auto it = abandoned_fetches_.begin(); it != abandoned_fetches_.end();) {
    const uint64_t request_id = it->first;
    AbandonedFetch& fetch = it->second;
    if (!fetch.served) {
      absl::StatusOr<std::string> late =
          node_->Receive(messages::FetchReplyTag(request_id), absl::ZeroDuration());
      if (late.ok()) {
        absl::StatusOr<absl::string_view> served = messages::DecodeFetchReply(*late);
        if (!served.ok() || !served->empty()) {  // refused, or the data was in it
          it = abandoned_fetches_.erase(it);
          continue;
        }
        fetch.served = true;
      }
    }
    if (fetch.served) {
      absl::StatusOr<std::string> late = node_->Receive(
          messages::FetchDataTag(request_id), absl::ZeroDuration(), kLateDataTransferTimeout);
      if (late.ok()) {
        spdlog::debug("data plane of node {}: dropped the late data of fetch {} ({} bytes)",
                      options_.node_id, request_id, late->size());
        it = abandoned_fetches_.erase(it);
        continue;
      }
    }
    it = now - fetch.since > kAbandonedWatch ? abandoned_fetches_.erase(it) : std::next(it);
  }
  abandoned_fetches_mu_.Unlock();
}

}  // namespace dragon::agent
