// One client's HeadService.Session stream on gRPC's callback API. Why: with
// the sync API a session had a reader thread (gRPC's handler thread) and a
// writer thread of its own, so every submitted batch crossed from gRPC's
// poller to the handler thread before the Head saw it, and every result batch
// crossed from the agent stream's thread to the writer thread before it left:
// two thread wake-ups per round trip, each tens of microseconds on a loaded
// node, and CPU the tasks could have used. Here a read is handled on the gRPC
// thread that completed it; writes are OutboxStream's, as for agents.
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
  // Checks the caller's token, then reads the Hello (or finishes at once with
  // UNAUTHENTICATED); gRPC owns the object, which deletes itself in OnDone().
  SessionStream(Head* head, const common::TokenCheck* auth, grpc::CallbackServerContext* context);

  void OnReadDone(bool ok) override;

 private:
  // The first message: Hello, then the session is opened and Welcome sent.
  void OpenSession();
  // The read side ended (client half-closed, stream broke, protocol error):
  // the Head closes the session (cancelling what it left), which closes the
  // outbox; once everything queued is written the stream finishes.
  void EndReads(const std::string& why, grpc::Status status);

  Head* const head_;
  dragon::v1::ClientMessage in_;
  bool opened_ = false;  // read side only
  SessionId id_ = 0;     // read side only, once opened
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_SESSION_STREAM_H_
