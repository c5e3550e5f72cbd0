// One agent's AgentService.Connect stream on gRPC's callback API, so that an
// agent costs the head no thread of its own. Why: with the sync API each
// stream held a reader thread and a writer thread (525 head threads at 256
// agents), and every message meant a thread wake-up on each side of the
// Head's lock. Here reads are handled on the gRPC thread that completed
// them, and whatever the Head pushes into the agent's outbox is written from
// the pushing thread (or from the previous write's completion), merged, one
// write in flight at a time.
#ifndef DRAGON_DAEMON_AGENT_STREAM_H_
#define DRAGON_DAEMON_AGENT_STREAM_H_

#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "common/transport.h"
#include "daemon/head.h"
#include "proto/agent.grpc.pb.h"

namespace dragon::daemon {

class AgentStream final
    : public grpc::ServerBidiReactor<dragon::v1::AgentMessage, dragon::v1::HeadToAgent> {
 public:
  // Checks the caller's token, then starts reading (or finishes at once with
  // UNAUTHENTICATED); gRPC owns the object, which deletes itself in OnDone().
  AgentStream(Head* head, const common::TokenCheck* auth, grpc::CallbackServerContext* context);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone() override;

 private:
  // What the outbox's push hook reaches the stream through. It outlives the
  // stream (the Head keeps a lost agent's outbox, and with it the hook), so
  // OnDone() clears `stream` under `mu`, which also guards the write state.
  struct Link {
    std::mutex mu;
    AgentStream* stream = nullptr;
  };
  // The Head's way to end this stream (a lost or fenced incarnation).
  static void Drop(const std::shared_ptr<Link>& link);

  // The read side ended (agent closed, stream broke, protocol error): the
  // Head loses the agent, which closes the outbox; once it is written out
  // the stream finishes with `status`.
  void EndReads(const std::string& why, grpc::Status status);
  // Starts the next write, or finishes the stream when all is written and
  // nothing more can come. link_->mu held.
  void PumpLocked();

  Head* const head_;
  grpc::CallbackServerContext* const context_;
  const std::string peer_;
  std::shared_ptr<Link> link_;
  dragon::v1::AgentMessage in_;
  AgentIndex index_ = kNoAgent;  // set once registered; read by the reading side only

  // Guarded by link_->mu.
  std::string who_;  // "agent NODE" for logs, once registered
  std::shared_ptr<AgentOutbox> outbox_;
  std::deque<dragon::v1::HeadToAgent> pending_;  // merged, front() being written
  bool writing_ = false;
  bool broken_ = false;     // a write failed: the peer is gone, drop the rest
  bool reads_done_ = false;
  bool finished_ = false;
  grpc::Status status_;
};

// AgentService on the callback API: one AgentStream per Connect.
class AgentServiceImpl final : public dragon::v1::AgentService::CallbackService {
 public:
  AgentServiceImpl(Head* head, const common::TokenCheck* auth) : head_(head), auth_(auth) {}

  grpc::ServerBidiReactor<dragon::v1::AgentMessage, dragon::v1::HeadToAgent>* Connect(
      grpc::CallbackServerContext* context) override {
    return new AgentStream(head_, auth_, context);
  }

 private:
  Head* head_;
  const common::TokenCheck* auth_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_AGENT_STREAM_H_
