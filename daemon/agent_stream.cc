#include "daemon/agent_stream.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/grpc_status.h"
#include "daemon/message_batching.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

AgentStream::AgentStream(Head* head, const common::TokenCheck* auth,
                         grpc::CallbackServerContext* context)
    : head_(head), context_(context), peer_(context->peer()), link_(std::make_shared<Link>()) {
  link_->stream = this;
  if (grpc::Status refused = auth->Check(*context); !refused.ok()) {
    std::lock_guard<std::mutex> lock(link_->mu);
    reads_done_ = true;
    status_ = std::move(refused);
    PumpLocked();  // nothing to write: finishes with the refusal
    return;
  }
  StartRead(&in_);
}

void AgentStream::Drop(const std::shared_ptr<Link>& link) {
  std::lock_guard<std::mutex> lock(link->mu);
  // Cancelling ends the read side (OnReadDone(false)) and fails the agent's
  // writes, so a fenced agent can deliver nothing more; OnDone() follows.
  if (link->stream != nullptr) link->stream->context_->TryCancel();
}

void AgentStream::OnReadDone(bool ok) {
  if (!ok) {
    EndReads(context_->IsCancelled() ? "agent stream broke" : "agent closed its stream",
             grpc::Status::OK);
    return;
  }
  if (index_ == kNoAgent) {
    if (!in_.has_register_()) {
      EndReads("", grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                "the first message of an agent must be Register"));
      return;
    }
    auto outbox = std::make_shared<AgentOutbox>();
    // The hook holds the link, never the stream: see Link.
    outbox->SetOnPush([link = link_] {
      std::lock_guard<std::mutex> lock(link->mu);
      if (link->stream != nullptr) link->stream->PumpLocked();
    });
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      outbox_ = outbox;
      who_ = absl::StrCat("agent ", in_.register_().node_id());
    }
    // Pushes Registered (and maybe tasks), which the hook starts writing.
    AgentLink link{outbox, [weak = std::weak_ptr<Link>(link_)] {
                     if (auto l = weak.lock()) Drop(l);
                   },
                   peer_};
    auto registration = head_->RegisterAgent(in_.register_(), std::move(link));
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
  std::shared_ptr<AgentOutbox> outbox;
  {
    std::lock_guard<std::mutex> lock(link_->mu);
    reads_done_ = true;
    status_ = std::move(status);
    outbox = outbox_;
  }
  if (index_ != kNoAgent) {
    head_->AgentLost(index_, why);  // closes the outbox; its hook pumps
  } else if (outbox != nullptr) {
    outbox->Close();  // refused at Register: the Head never kept it
  }
  std::lock_guard<std::mutex> lock(link_->mu);
  PumpLocked();
}

void AgentStream::PumpLocked() {
  if (finished_ || writing_) return;
  if (pending_.empty() && outbox_ != nullptr) {
    std::vector<dragon::v1::HeadToAgent> drained = outbox_->TakeAll();
    if (!broken_) {
      for (auto& msg : MergeForAgent(&drained)) pending_.push_back(std::move(msg));
    }
  }
  if (!pending_.empty()) {
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

void AgentStream::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(link_->mu);
  writing_ = false;
  if (!pending_.empty()) pending_.pop_front();
  if (!ok && !broken_) {
    // The read side sees the broken stream too and loses the agent.
    spdlog::info("{}: write failed, peer gone", who_.empty() ? peer_ : who_);
    broken_ = true;
    pending_.clear();
  }
  PumpLocked();
}

void AgentStream::OnDone() {
  {
    std::lock_guard<std::mutex> lock(link_->mu);
    link_->stream = nullptr;
  }
  delete this;
}

}  // namespace dragon::daemon
