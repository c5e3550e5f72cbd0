// One client's HeadService.Session stream on gRPC's callback API. Why: with
// the sync API a session had a reader thread (gRPC's handler thread) and a
// writer thread of its own, so every submitted batch crossed from gRPC's
// poller to the handler thread before the Head saw it, and every result batch
// crossed from the agent stream's thread to the writer thread before it left:
// two thread wake-ups per round trip, each tens of microseconds on a loaded
// node, and CPU the agents' tasks could have used. Here a read is handled on
// the gRPC thread that completed it, and whatever the Head pushes into the
// session's outbox is written from the pushing thread (or from the previous
// write's completion), merged, one write in flight at a time, as for agents
// (agent_stream.h).
#ifndef DRAGON_DAEMON_SESSION_STREAM_H_
#define DRAGON_DAEMON_SESSION_STREAM_H_

#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "common/transport.h"
#include "daemon/head.h"
#include "proto/head.grpc.pb.h"

namespace dragon::daemon {

class SessionStream final
    : public grpc::ServerBidiReactor<dragon::v1::ClientMessage, dragon::v1::HeadMessage> {
 public:
  // Checks the caller's token, then reads the Hello (or finishes at once with
  // UNAUTHENTICATED); gRPC owns the object, which deletes itself in OnDone().
  SessionStream(Head* head, const common::TokenCheck* auth, grpc::CallbackServerContext* context);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone() override;

 private:
  // What the outbox's push hook reaches the stream through: the Head may
  // push into a session's outbox until CloseSession, which can race with the
  // stream's end, so OnDone() clears `stream` under `mu` (which also guards
  // the write state) and a late push finds nothing.
  struct Link {
    std::mutex mu;
    SessionStream* stream = nullptr;
  };

  // The first message: Hello, then the session is opened and Welcome sent.
  void OpenSession();
  // The read side ended (client half-closed, stream broke, protocol error):
  // the Head closes the session, which closes the outbox; once everything
  // queued is written the stream finishes with `status`.
  void EndReads(const std::string& why, grpc::Status status);
  // Starts the next write, or finishes the stream when all is written and
  // nothing more can come. link_->mu held.
  void PumpLocked();

  Head* const head_;
  grpc::CallbackServerContext* const context_;
  const std::string peer_;
  std::shared_ptr<Link> link_;
  dragon::v1::ClientMessage in_;
  bool opened_ = false;  // read side only
  SessionId id_ = 0;     // read side only, once opened

  // Guarded by link_->mu.
  std::shared_ptr<SessionOutbox> outbox_;
  bool welcomed_ = false;  // Welcome queued: the outbox may be drained after it
  std::deque<dragon::v1::HeadMessage> pending_;  // merged, front() being written
  bool writing_ = false;
  bool broken_ = false;  // a write failed: the client is gone, drop the rest
  bool reads_done_ = false;
  bool finished_ = false;
  grpc::Status status_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_SESSION_STREAM_H_
