// One agent's AgentService.Connect stream on gRPC's callback API, so that an
// agent costs the head no thread of its own (at 256 agents the sync API held
// 525 head threads). Reads are handled on the gRPC thread that completed them;
// writes are OutboxStream's.
#ifndef DRAGON_DAEMON_AGENT_STREAM_H_
#define DRAGON_DAEMON_AGENT_STREAM_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "common/transport.h"
#include "daemon/head.h"
#include "daemon/outbox_stream.h"
#include "proto/agent.grpc.pb.h"

namespace dragon::daemon {

class AgentStream final : public OutboxStream<dragon::v1::AgentMessage, dragon::v1::HeadToAgent> {
 public:
  // Checks the caller's token, then starts reading (or finishes at once with
  // UNAUTHENTICATED); gRPC owns the object, which deletes itself in OnDone().
  AgentStream(Head* head, const common::TokenCheck* auth, grpc::CallbackServerContext* context);

  void OnReadDone(bool ok) override;

 private:
  // The read side ended (agent closed, stream broke, protocol error): the
  // Head loses the agent, which closes the outbox; once it is written out
  // the stream finishes with `status`.
  void EndReads(const std::string& why, grpc::Status status);

  Head* const head_;
  dragon::v1::AgentMessage in_;
  AgentIndex index_ = kNoAgent;  // set once registered; read by the reading side only
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
