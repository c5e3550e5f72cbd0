// The write side shared by the head's streams on the CompletionLoop
// (AgentStream, SessionStream): whatever the Head pushes into the stream's
// outbox is written from the pushing thread (or from the previous write's
// completion), merged, one write in flight at a time; the stream finishes once
// its read side has ended and everything queued is written. No thread per
// stream: with the sync API each stream held a reader and a writer thread, and
// every message meant a thread wake-up on each side of the Head's lock.
#ifndef DRAGON_DAEMON_OUTBOX_STREAM_H_
#define DRAGON_DAEMON_OUTBOX_STREAM_H_

#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "common/transport.h"
#include "daemon/loop_stream.h"
#include "daemon/message_batching.h"
#include "daemon/outbox.h"
#include "spdlog/spdlog.h"

namespace dragon::daemon {

template <typename In, typename Out>
class OutboxStream : public LoopStream<In, Out> {
 public:
  // Merges drained messages into as few writes as allowed.
  using Merge = std::vector<Out> (*)(std::vector<Out>*, size_t);

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(link_->mu);
    writing_ = false;
    if (!pending_.empty()) pending_.pop_front();
    if (!ok && !broken_) {
      // The read side sees the broken stream too and ends it.
      spdlog::info("{}: write failed, peer gone", who_.empty() ? peer_ : who_);
      broken_ = true;
      pending_.clear();
    }
    PumpLocked();
  }

  void OnDone() override {
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      link_->stream = nullptr;
    }
    delete this;
  }

 protected:
  // What the outbox's push hook (and the Head's Drop) reach the stream
  // through. It can outlive the stream (the Head keeps a lost agent's outbox,
  // and with it the hook), so OnDone() clears `stream` under `mu`, which also
  // guards the write state.
  struct Link {
    std::mutex mu;
    OutboxStream* stream = nullptr;
  };

  OutboxStream(CompletionLoop* loop, Merge merge)
      : LoopStream<In, Out>(loop), merge_(merge), link_(std::make_shared<Link>()) {
    link_->stream = this;
  }

  // The call has come (Begin()): unless `auth` accepts its token, the
  // stream finishes at once with UNAUTHENTICATED and this returns false.
  bool Admit(const common::TokenCheck* auth) {
    peer_ = this->context_.peer();
    if (grpc::Status refused = auth->Check(this->context_); !refused.ok()) {
      EndWrites(std::move(refused));  // nothing to write: finishes with the refusal
      return false;
    }
    return true;
  }

  // A new outbox whose pushes this stream writes; drained only once the
  // stream is `Attach`ed to it (Attach(outbox, false) holds it back until
  // Release()).
  std::shared_ptr<Outbox<Out>> MakeOutbox() {
    auto outbox = std::make_shared<Outbox<Out>>();
    // The hook holds the link, never the stream: see Link.
    outbox->SetOnPush([link = link_] {
      std::lock_guard<std::mutex> lock(link->mu);
      if (link->stream != nullptr) link->stream->PumpLocked();
    });
    return outbox;
  }
  void Attach(std::shared_ptr<Outbox<Out>> outbox, bool drain, std::string who) {
    std::lock_guard<std::mutex> lock(link_->mu);
    outbox_ = std::move(outbox);
    drain_ = drain;
    who_ = std::move(who);
  }
  // Queues `first` ahead of anything from the outbox and starts draining it
  // (a session's Welcome goes before any result).
  void Release(Out first, std::string who) {
    std::lock_guard<std::mutex> lock(link_->mu);
    pending_.push_front(std::move(first));
    drain_ = true;
    who_ = std::move(who);
    PumpLocked();
  }
  // Closes the attached outbox, if any (one the Head never kept).
  void CloseOutbox() {
    std::shared_ptr<Outbox<Out>> outbox;
    {
      std::lock_guard<std::mutex> lock(link_->mu);
      outbox = outbox_;
    }
    if (outbox != nullptr) outbox->Close();  // its hook pumps: not under link_->mu
  }
  // Writes `last` after what is queued (a refusal's explanation).
  void QueueLast(Out last) {
    std::lock_guard<std::mutex> lock(link_->mu);
    pending_.push_back(std::move(last));
  }
  // The read side has ended: once everything queued is written and the
  // outbox (if any) is closed, the stream finishes with `status`.
  void EndWrites(grpc::Status status) {
    std::lock_guard<std::mutex> lock(link_->mu);
    reads_done_ = true;
    drain_ = true;
    status_ = std::move(status);
    PumpLocked();
  }
  // Ends the stream from the Head's side (a lost or fenced agent):
  // cancelling fails its reads (OnReadDone(false)) and its writes.
  static void Cancel(const std::shared_ptr<Link>& link) {
    std::lock_guard<std::mutex> lock(link->mu);
    if (link->stream != nullptr) link->stream->context_.TryCancel();
  }

  std::string peer_;  // set by Admit(), before any write
  const std::shared_ptr<Link>& link() const { return link_; }

 private:
  // Starts the next write, or finishes the stream when all is written and
  // nothing more can come. link_->mu held.
  void PumpLocked() {
    if (finished_ || writing_) return;
    if (pending_.empty() && outbox_ != nullptr && drain_) {
      std::vector<Out> drained = outbox_->TakeAll();
      if (!broken_) {
        for (auto& msg : merge_(&drained, kBatchSoftLimitBytes)) pending_.push_back(std::move(msg));
      }
    }
    if (!pending_.empty() && !broken_) {
      writing_ = true;
      this->StartWrite(&pending_.front());
      return;
    }
    // Nothing left to write. Finish once no more can come: the read side has
    // ended and the outbox is closed (drained above after its Close()).
    if (reads_done_ && (outbox_ == nullptr || outbox_->closed())) {
      finished_ = true;
      this->Finish(status_);
    }
  }

  const Merge merge_;
  std::shared_ptr<Link> link_;
  // Guarded by link_->mu.
  std::string who_;  // for logs ("agent NODE", "session N"); the peer until set
  std::shared_ptr<Outbox<Out>> outbox_;
  bool drain_ = false;
  std::deque<Out> pending_;  // merged, front() being written
  bool writing_ = false;
  bool broken_ = false;  // a write failed: the peer is gone, drop the rest
  bool reads_done_ = false;
  bool finished_ = false;
  grpc::Status status_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_OUTBOX_STREAM_H_
