#include "daemon/session_stream.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/grpc_status.h"
#include "daemon/message_batching.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

void SessionStream::AcceptOn(CompletionLoop* loop, Request request, Head* head,
                             const common::TokenCheck* auth) {
  auto make = [loop, head, auth]() -> LoopStream* { return new SessionStream(loop, head, auth); };
  make()->Listen(std::move(request), make);
}

SessionStream::SessionStream(CompletionLoop* loop, Head* head, const common::TokenCheck* auth)
    : OutboxStream(loop, &MergeForClient), head_(head), auth_(auth) {}

void SessionStream::Begin() {
  if (Admit(auth_)) StartRead(&in_);
}

void SessionStream::OnReadDone(bool ok) {
  if (!ok) {
    if (!opened_) {
      EndReads("", grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "session closed before Hello"));
    } else {
      EndReads(Cancelled() ? "stream cancelled" : "client closed the stream", grpc::Status::OK);
    }
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
  // Not drained until Welcome is queued, so nothing the Head pushes meanwhile
  // can overtake it.
  std::shared_ptr<SessionOutbox> outbox = MakeOutbox();
  Attach(outbox, /*drain=*/false, "");
  auto welcome = head_->OpenSession(in_.hello(), outbox, peer_);
  if (!welcome.ok()) {
    spdlog::warn("session from {} refused: {}", peer_, std::string(welcome.status().message()));
    if (absl::IsFailedPrecondition(welcome.status())) {
      // A protocol mismatch: the client reads this head's version from a
      // Welcome field, then the stream's error says the rest.
      dragon::v1::HeadMessage version;
      version.mutable_welcome()->set_protocol_version(kProtocolVersion);
      QueueLast(std::move(version));
    }
    EndReads("", ToGrpcStatus(welcome.status()));  // the Head never kept the outbox
    return;
  }
  opened_ = true;
  id_ = welcome->session_id();
  dragon::v1::HeadMessage msg;
  *msg.mutable_welcome() = *std::move(welcome);
  Release(std::move(msg), absl::StrCat("session ", id_));
  in_.Clear();
  StartRead(&in_);
}

void SessionStream::EndReads(const std::string& why, grpc::Status status) {
  if (opened_) {
    head_->CloseSession(id_, why);  // closes the outbox; its hook pumps
  } else {
    CloseOutbox();
  }
  EndWrites(std::move(status));
}

}  // namespace dragon::daemon
