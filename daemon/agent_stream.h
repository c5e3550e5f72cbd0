// One agent's AgentService.Connect stream on the head's CompletionLoop, so
// that an agent costs the head no thread of its own (at 256 agents the sync
// API held 525 head threads). Reads are handled on the loop's thread; writes
// are OutboxStream's.
#ifndef DRAGON_DAEMON_AGENT_STREAM_H_
#define DRAGON_DAEMON_AGENT_STREAM_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "common/transport.h"
#include "daemon/completion_loop.h"
#include "daemon/head.h"
#include "daemon/outbox_stream.h"
#include "proto/agent.grpc.pb.h"

namespace dragon::daemon {

class AgentStream final : public OutboxStream<dragon::v1::AgentMessage, dragon::v1::HeadToAgent> {
 public:
  // Takes Connect calls on `loop` from now until it stops, one AgentStream
  // each; `request` is the service's RequestConnect.
  static void AcceptOn(CompletionLoop* loop, Request request, Head* head,
                       const common::TokenCheck* auth);

 private:
  AgentStream(CompletionLoop* loop, Head* head, const common::TokenCheck* auth);

  // Checks the caller's token, then starts reading (or finishes at once with
  // UNAUTHENTICATED); the object deletes itself in OnDone().
  void Begin() override;
  void OnReadDone(bool ok) override;
  // The read side ended (agent closed, stream broke, protocol error): the
  // Head loses the agent, which closes the outbox; once it is written out
  // the stream finishes with `status`.
  void EndReads(const std::string& why, grpc::Status status);

  Head* const head_;
  const common::TokenCheck* const auth_;
  dragon::v1::AgentMessage in_;
  AgentIndex index_ = kNoAgent;  // set once registered; read by the reading side only
};

// AgentService: its one method, Connect, on the async API (one AgentStream
// per call, on the head's CompletionLoop).
class AgentServiceImpl final : public dragon::v1::AgentService::AsyncService {
 public:
  AgentServiceImpl(Head* head, const common::TokenCheck* auth) : head_(head), auth_(auth) {}

  // Takes Connect calls on `loop` until it stops; call once the server is built.
  void AcceptOn(CompletionLoop* loop) {
    AgentStream::AcceptOn(
        loop,
        [this](grpc::ServerContext* context,
               grpc::ServerAsyncReaderWriter<dragon::v1::HeadToAgent, dragon::v1::AgentMessage>*
                   stream,
               grpc::ServerCompletionQueue* cq, void* tag) {
          RequestConnect(context, stream, cq, cq, tag);
        },
        head_, auth_);
  }

 private:
  Head* head_;
  const common::TokenCheck* auth_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_AGENT_STREAM_H_
