// DataPlane::Call: a request and its answer between two agents over UCX,
// for services built on the data plane (the Dictionary's shard operations,
// agent/dict_store.h), and the threads that answer other agents' Calls with
// DataPlaneOptions::call_handler. Apart from the Push threads, so that a
// slow Pull serving a Push never holds up a Dictionary operation (nor the
// reverse).
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/data_plane.h"
#include "agent/data_plane_impl.h"
#include "agent/data_plane_messages.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

namespace messages = data_plane_messages;

// How long a request that has begun to arrive may take to arrive whole (a
// 64 MiB Dictionary value takes longer than kRequestPoll, a 1 GiB channel
// message ~25 s over the test bed's TCP; cut off, it would be lost). A
// sender lost meanwhile fails it at once; a hung one holds this thread that
// long at most.
constexpr absl::Duration kCallTransferTimeout = absl::Seconds(120);
// Threads that receive requests (see StartCallThreads).
constexpr int kCallReceivers = 2;

}  // namespace

void DataPlane::Impl::StartCallThreads() {
  // A few threads receive (each polls UCX every kRequestPoll: an idle agent
  // wakes only that often), `call_threads` answer. Several receivers, so
  // that a request still arriving (a 1 GiB message takes seconds) does not
  // hold up the others; answering apart, since an answer may wait (a channel
  // operation waits at home up to its slice).
  for (int i = 0; i < kCallReceivers; ++i) {
    call_threads_.emplace_back([this] { ReceiveCalls(); });
  }
  for (int i = 0; i < options_.call_threads; ++i) {
    call_threads_.emplace_back([this] { AnswerCalls(); });
  }
}

void DataPlane::Impl::StopCallThreads() {
  absl::MutexLock lock(&calls_mu_);
  calls_stopping_ = true;
}

absl::StatusOr<std::string> DataPlane::Impl::Answer(const std::string& from_node,
                                                    std::string payload) {
  if (!options_.call_handler) {
    return absl::UnimplementedError(
        absl::StrCat("node ", options_.node_id, " answers no calls (no handler)"));
  }
  return options_.call_handler(from_node, std::move(payload));
}

absl::StatusOr<std::string> DataPlane::Impl::Call(const std::string& node_id, std::string payload,
                                                  absl::Duration timeout) {
  if (node_id == options_.node_id) return Answer(node_id, std::move(payload));
  const absl::Time deadline = DeadlineOf(timeout);
  return OnPeer<std::string>(node_id, deadline, [&](const Connection& connection) {
    return CallRemote(connection, payload, deadline);
  });
}

absl::StatusOr<std::string> DataPlane::Impl::CallRemote(const Connection& connection,
                                                        const std::string& payload,
                                                        absl::Time deadline) {
  const std::string what = absl::StrCat("call of node ", connection.info.node_id);
  const absl::Duration remaining = deadline - absl::Now();
  // A Send that times out closes its connection: never start one without time.
  if (remaining <= absl::ZeroDuration()) return absl::DeadlineExceededError(what + ": no time left");
  messages::CallRequest request;
  request.request_id = messages::NextRequestId();
  request.node_id = options_.node_id;
  // The other side stops short of our deadline, so that its answer has time
  // to travel back.
  request.timeout = remaining - std::min(remaining / 10, absl::Milliseconds(500));
  request.payload = payload;
  absl::Status sent = node_->Send(connection.peer, messages::kCallRequestTag,
                                  messages::EncodeCallRequest(request), remaining);
  if (!sent.ok()) return WithContext(sent, what);
  absl::StatusOr<std::string> reply = node_->Receive(
      connection.peer, messages::CallReplyTag(request.request_id), deadline - absl::Now());
  if (!reply.ok()) {
    if (absl::IsDeadlineExceeded(reply.status())) {
      absl::MutexLock lock(&abandoned_calls_mu_);
      abandoned_calls_[request.request_id] = absl::Now();
    }
    return WithContext(reply.status(), what + ": waiting for the answer");
  }
  absl::StatusOr<std::string> answer = messages::DecodeCallReply(*reply);
  if (!answer.ok()) return WithContext(answer.status(), absl::StrCat("node ", connection.info.node_id));
  return answer;
}

void DataPlane::Impl::ReceiveCalls() {
  for (;;) {
    {
      absl::MutexLock lock(&calls_mu_);
      if (calls_stopping_) return;
    }
    absl::StatusOr<std::string> message =
        node_->Receive(messages::kCallRequestTag, kRequestPoll, kCallTransferTimeout);
    if (message.ok()) {
      absl::MutexLock lock(&calls_mu_);
      call_queue_.push_back(*std::move(message));
    } else if (absl::IsDeadlineExceeded(message.status())) {
      DrainAbandonedCalls();
    } else {
      spdlog::warn("data plane of node {}: receiving a call failed: {}", options_.node_id,
                   message.status().ToString());
    }
  }
}

void DataPlane::Impl::AnswerCalls() {
  for (;;) {
    std::string message;
    {
      absl::MutexLock lock(&calls_mu_);
      calls_mu_.Await(absl::Condition(
          +[](Impl* impl) ABSL_EXCLUSIVE_LOCKS_REQUIRED(impl->calls_mu_) {
            return impl->calls_stopping_ || !impl->call_queue_.empty();
          },
          this));
      if (call_queue_.empty()) return;  // stopping, nothing left to answer
      message = std::move(call_queue_.front());
      call_queue_.pop_front();
    }
    ServeCall(message);
  }
}

void DataPlane::Impl::ServeCall(absl::string_view message) {
  absl::StatusOr<messages::CallRequest> request = messages::DecodeCallRequest(message);
  if (!request.ok()) {
    spdlog::warn("data plane of node {}: dropped a call: {}", options_.node_id,
                 request.status().ToString());
    return;
  }
  const absl::Time deadline = absl::Now() + request->timeout;
  absl::StatusOr<std::string> answer =
      request->timeout <= absl::ZeroDuration()
          ? absl::DeadlineExceededError("the call came with no time left")
          : Answer(request->node_id, std::move(request->payload));
  const absl::Duration timeout = std::max(deadline - absl::Now(), kAnswerMinTimeout);
  absl::StatusOr<Connection> connection = ConnectionTo(request->node_id);
  absl::Status sent = connection.status();
  if (connection.ok()) {
    sent = node_->Send(connection->peer, messages::CallReplyTag(request->request_id),
                       messages::EncodeCallReply(answer), timeout);
    if (!sent.ok()) DropIfUnusable(request->node_id, *connection);
  }
  if (!sent.ok()) {
    spdlog::warn("data plane of node {}: cannot answer call {} of node {}: {}", options_.node_id,
                 request->request_id, request->node_id, sent.ToString());
  }
}

void DataPlane::Impl::DrainAbandonedCalls() {
  if (!abandoned_calls_mu_.TryLock()) return;
  const absl::Time now = absl::Now();
  for (auto it = abandoned_calls_.begin(); it != abandoned_calls_.end();) {
    absl::StatusOr<std::string> late =
        node_->Receive(messages::CallReplyTag(it->first), absl::ZeroDuration());
    if (late.ok()) {
      spdlog::debug("data plane of node {}: dropped the late answer to call {}", options_.node_id,
                    it->first);
      it = abandoned_calls_.erase(it);
    } else {
      it = now - it->second > kAbandonedWatch ? abandoned_calls_.erase(it) : std::next(it);
    }
  }
  abandoned_calls_mu_.Unlock();
}

}  // namespace dragon::agent
