// One client's HeadService.Session stream on the head's CompletionLoop. Why:
// with the sync API a session had a reader thread (gRPC's handler thread) and
// a writer thread of its own, so every submitted batch crossed from gRPC's
// poller to the handler thread before the Head saw it, and every result batch
// crossed from the agent stream's thread to the writer thread before it left;
// on the callback API gRPC's two callback threads took turns on each read and
// write (completion_loop.h). Here a read is handled on the loop's thread that
// saw it complete; writes are OutboxStream's, as for agents.
#ifndef DRAGON_DAEMON_SESSION_STREAM_H_
#define DRAGON_DAEMON_SESSION_STREAM_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "common/transport.h"
#include "daemon/head.h"
#include "daemon/outbox_stream.h"
#include "proto/head.grpc.pb.h"

namespace dragon::daemon {

class SessionStream final : public OutboxStream<dragon::v1::ClientMessage, dragon::v1::HeadMessage> {
 public:
  // Takes Session calls on `loop` from now until it stops, one SessionStream
  // each; `request` is the service's RequestSession.
  static void AcceptOn(CompletionLoop* loop, Request request, Head* head,
                       const common::TokenCheck* auth);

 private:
  SessionStream(CompletionLoop* loop, Head* head, const common::TokenCheck* auth);

  // Checks the caller's token, then reads the Hello (or finishes at once with
  // UNAUTHENTICATED); the object deletes itself in OnDone().
  void Begin() override;
  void OnReadDone(bool ok) override;
  // The first message: Hello, then the session is opened and Welcome sent.
  void OpenSession();
  // The read side ended (client half-closed, stream broke, protocol error):
  // the Head closes the session (cancelling what it left), which closes the
  // outbox; once everything queued is written the stream finishes.
  void EndReads(const std::string& why, grpc::Status status);

  Head* const head_;
  const common::TokenCheck* const auth_;
  dragon::v1::ClientMessage in_;
  bool opened_ = false;  // read side only
  SessionId id_ = 0;     // read side only, once opened
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_SESSION_STREAM_H_
