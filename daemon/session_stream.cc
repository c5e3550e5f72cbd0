#include "daemon/session_stream.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/grpc_status.h"
#include "daemon/message_batching.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

SessionStream::SessionStream(Head* head, const common::TokenCheck* auth,
                             grpc::CallbackServerContext* context)
    : head_(head), context_(context), peer_(context->peer()), link_(std::make_shared<Link>()) {
  link_->stream = this;
  if (grpc::Status refused = auth->Check(*context); !refused.ok()) {
    std::lock_guard<std::mutex> lock(link_->mu);
    reads_done_ = true;
    welcomed_ = true;
    status_ = std::move(refused);
    PumpLocked();  // nothing to write: finishes with the refusal
    return;
  }
  StartRead(&in_);
}

void SessionStream::OnReadDone(bool ok) {
  if (!ok) {
    if (!opened_) {
      EndReads("", grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "session closed before Hello"));
      return;
    }
    EndReads(context_->IsCancelled() ? "stream cancelled" : "client closed the stream",
             grpc::Status::OK);
    return;
  }
  if (!opened_) {
    OpenSession();
    return;
  }
  if (!in_.has_submit()) {
    EndReads("protocol error: unexpected message after Hello",
             grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "only SubmitBatch messages may follow Hello"));
    return;
  }
  head_->Submit(id_, in_.mutable_submit());
  in_.Clear();
  StartRead(&in_);
}

void SessionStream::OpenSession() {
  if (!in_.has_hello()) {
    EndReads("", grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              "the first message of a session must be Hello"));
    return;
  }
  auto outbox = std::make_shared<SessionOutbox>();
  // The hook holds the link, never the stream: see Link.
  outbox->SetOnPush([link = link_] {
    std::lock_guard<std::mutex> lock(link->mu);
    if (link->stream != nullptr) link->stream->PumpLocked();
  });
  {
    std::lock_guard<std::mutex> lock(link_->mu);
    outbox_ = outbox;
  }
  auto welcome = head_->OpenSession(in_.hello(), outbox, peer_);
  if (!welcome.ok()) {
    spdlog::warn("session from {} refused: {}", peer_, std::string(welcome.status().message()));
    if (absl::IsFailedPrecondition(welcome.status())) {
      // A protocol mismatch: the client reads this head's version from a
      // Welcome field, then the stream's error says the rest.
      dragon::v1::HeadMessage version;
      version.mutable_welcome()->set_protocol_version(kProtocolVersion);
      std::lock_guard<std::mutex> lock(link_->mu);
      pending_.push_back(std::move(version));
    }
    outbox->Close();  // the Head never kept it
    EndReads("", ToGrpcStatus(welcome.status()));
    return;
  }
  opened_ = true;
  id_ = welcome->session_id();
  {
    // Welcome goes first: until it is queued the outbox is not drained, so
    // nothing the Head pushes meanwhile can overtake it.
    dragon::v1::HeadMessage msg;
    *msg.mutable_welcome() = *std::move(welcome);
    std::lock_guard<std::mutex> lock(link_->mu);
    pending_.push_front(std::move(msg));
    welcomed_ = true;
    PumpLocked();
  }
  in_.Clear();
  StartRead(&in_);
}

void SessionStream::EndReads(const std::string& why, grpc::Status status) {
  {
    std::lock_guard<std::mutex> lock(link_->mu);
    reads_done_ = true;
    welcomed_ = true;  // a refused session's outbox is closed and empty
    status_ = std::move(status);
  }
  // Closes the outbox (tasks the session left are cancelled); its hook pumps.
  if (opened_) head_->CloseSession(id_, why);
  std::lock_guard<std::mutex> lock(link_->mu);
  PumpLocked();
}

void SessionStream::PumpLocked() {
  if (finished_ || writing_) return;
  if (pending_.empty() && outbox_ != nullptr && welcomed_) {
    std::vector<dragon::v1::HeadMessage> drained = outbox_->TakeAll();
    if (!broken_) {
      for (auto& msg : MergeForClient(&drained)) pending_.push_back(std::move(msg));
    }
  }
  if (!pending_.empty() && !broken_) {
    writing_ = true;
    StartWrite(&pending_.front());
    return;
  }
  // Nothing left to write. Finish once no more can come: the read side has
  // ended and the outbox is closed (drained above after its Close()).
  if (reads_done_ && (outbox_ == nullptr || outbox_->closed())) {
    finished_ = true;
    Finish(status_);
  }
}

void SessionStream::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(link_->mu);
  writing_ = false;
  if (!pending_.empty()) pending_.pop_front();
  if (!ok && !broken_) {
    // The read side sees the broken stream too and closes the session.
    spdlog::info("session {}: write failed, peer gone", id_);
    broken_ = true;
    pending_.clear();
  }
  PumpLocked();
}

void SessionStream::OnDone() {
  {
    std::lock_guard<std::mutex> lock(link_->mu);
    link_->stream = nullptr;
  }
  delete this;
}

}  // namespace dragon::daemon
