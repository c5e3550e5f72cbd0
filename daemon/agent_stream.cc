#include "daemon/agent_stream.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/grpc_status.h"
#include "daemon/message_batching.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

void AgentStream::AcceptOn(CompletionLoop* loop, Request request, Head* head,
                           const common::TokenCheck* auth) {
  auto make = [loop, head, auth]() -> LoopStream* { return new AgentStream(loop, head, auth); };
  make()->Listen(std::move(request), make);
}

AgentStream::AgentStream(CompletionLoop* loop, Head* head, const common::TokenCheck* auth)
    : OutboxStream(loop, &MergeForAgent), head_(head), auth_(auth) {}

void AgentStream::Begin() {
  if (Admit(auth_)) StartRead(&in_);
}

void AgentStream::OnReadDone(bool ok) {
  if (!ok) {
    EndReads(Cancelled() ? "agent stream broke" : "agent closed its stream", grpc::Status::OK);
    return;
  }
  if (index_ == kNoAgent) {
    if (!in_.has_register_()) {
      EndReads("", grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                "the first message of an agent must be Register"));
      return;
    }
    std::shared_ptr<AgentOutbox> outbox = MakeOutbox();
    Attach(outbox, /*drain=*/true, absl::StrCat("agent ", in_.register_().node_id()));
    // Pushes Registered (and maybe tasks), which the hook starts writing.
    AgentLink agent_link{outbox, [weak = std::weak_ptr<Link>(link())] {
                     if (auto l = weak.lock()) Cancel(l);
                   },
                   peer_};
    auto registration = head_->RegisterAgent(in_.register_(), std::move(agent_link));
    if (!registration.ok()) {
      spdlog::error("agent from {} refused: {}", peer_,
                    std::string(registration.status().message()));
      EndReads("", ToGrpcStatus(registration.status()));
      return;
    }
    index_ = registration->index;
  } else if (in_.has_update()) {
    head_->ApplyUpdate(index_, in_.mutable_update());
  } else if (in_.has_heartbeat()) {
    head_->Heartbeat(index_, in_.heartbeat());
  } else {
    EndReads("protocol error: unexpected message after Register",
             grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "only updates and heartbeats may follow Register"));
    return;
  }
  in_.Clear();
  StartRead(&in_);
}

void AgentStream::EndReads(const std::string& why, grpc::Status status) {
  if (index_ != kNoAgent) {
    head_->AgentLost(index_, why);  // closes the outbox; its hook pumps
  } else {
    CloseOutbox();  // refused at Register: the Head never kept it
  }
  EndWrites(std::move(status));
}

}  // namespace dragon::daemon
