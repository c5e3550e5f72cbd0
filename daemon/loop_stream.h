// A bidirectional stream served on a CompletionLoop (gRPC's async API) with
// the shape of a callback-API reactor: StartRead/StartWrite/Finish, and
// OnReadDone/OnWriteDone run on the loop's thread. It owns its call: it
// deletes itself once the call is over and every operation it started has
// come back (or the loop releases it at shutdown).
//
// Rules, as for a reactor: one read and one write in flight at most; Finish
// once, with no write in flight, and no operation after it. StartWrite and
// Finish may be called from any thread; StartRead from the loop's thread.
#ifndef DRAGON_DAEMON_LOOP_STREAM_H_
#define DRAGON_DAEMON_LOOP_STREAM_H_

#include <atomic>
#include <functional>
#include <utility>

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include "daemon/completion_loop.h"

namespace dragon::daemon {

template <typename In, typename Out>
class LoopStream : public LoopCall {
 public:
  // How a new call of the method is asked for (the generated service's
  // RequestX, bound to the service).
  using Request = std::function<void(grpc::ServerContext*, grpc::ServerAsyncReaderWriter<Out, In>*,
                                     grpc::ServerCompletionQueue*, void* tag)>;

  // Asks for the next call of the method; once it comes, another stream is
  // asked for (`make` makes it) and this one Begin()s.
  void Listen(Request request, std::function<LoopStream*()> make) {
    request_ = std::move(request);
    make_ = std::move(make);
    // Before the request: the done tag then comes for every call that starts.
    context_.AsyncNotifyWhenDone(&done_tag_);
    const bool asked = loop_->StartOp([this] {
      request_(&context_, &stream_, loop_->queue(), &accept_tag_);
    });
    if (!asked) Abandon();  // the loop is stopping
  }

  void Abandon() final {
    loop_->Unregister(this);
    OnDone();
  }

 protected:
  explicit LoopStream(CompletionLoop* loop) : loop_(loop) { loop_->Register(this); }

  // The call has come: the peer's metadata is in context_.
  virtual void Begin() = 0;
  virtual void OnReadDone(bool ok) = 0;
  virtual void OnWriteDone(bool ok) = 0;
  // The call is over and released: deletes the object.
  virtual void OnDone() = 0;

  void StartRead(In* message) {
    pending_.fetch_add(1);
    if (!loop_->StartOp([&] { stream_.Read(message, &read_tag_); })) pending_.fetch_sub(1);
  }
  void StartWrite(const Out* message) {
    pending_.fetch_add(1);
    if (!loop_->StartOp([&] { stream_.Write(*message, &write_tag_); })) pending_.fetch_sub(1);
  }
  void Finish(const grpc::Status& status) {
    pending_.fetch_add(1);
    if (!loop_->StartOp([&] { stream_.Finish(status, &finish_tag_); })) pending_.fetch_sub(1);
  }

  // Whether the call was cancelled or broke rather than half-closed by the
  // peer: for OnReadDone(false). gRPC knows only once the call is over (the
  // done tag), and a broken stream's failed read comes off the queue just
  // before that tag. So a failed read is handed on after the done tag, or
  // after one more turn of the loop if none comes (a half-close: the call is
  // over only once finished).
  bool Cancelled() { return call_over_ && context_.IsCancelled(); }

  CompletionLoop* const loop_;
  grpc::ServerContext context_;

 private:
  // Called on the loop's thread after each tag: the object goes once the
  // call is over, it was finished, and nothing it started is out.
  void Settle() {
    if (call_over_ && finished_ && pending_.load() == 0) Abandon();
  }

  grpc::ServerAsyncReaderWriter<Out, In> stream_{&context_};
  Request request_;
  std::function<LoopStream*()> make_;
  std::atomic<int> pending_{0};  // reads, writes and the finish in flight
  bool call_over_ = false;       // loop thread only
  bool finished_ = false;        // loop thread only: the finish came back

  CompletionTag accept_tag_{[this](bool ok) {
    if (!ok) {  // the server is shutting down: no call came, and no done tag will
      Abandon();
      return;
    }
    if (LoopStream* next = make_()) next->Listen(request_, make_);
    Begin();
    Settle();
  }};
  CompletionTag read_tag_{[this](bool ok) {
    if (!ok && !call_over_) {
      // See Cancelled(): the alarm goes off behind whatever the queue holds.
      // It keeps the read's place in pending_.
      const bool armed = loop_->StartOp([this] {
        read_failed_.Set(loop_->queue(), gpr_now(GPR_CLOCK_MONOTONIC), &read_failed_tag_);
      });
      if (armed) return;
    }
    pending_.fetch_sub(1);
    OnReadDone(ok);
    Settle();
  }};
  grpc::Alarm read_failed_;
  CompletionTag read_failed_tag_{[this](bool) {
    pending_.fetch_sub(1);
    OnReadDone(false);
    Settle();
  }};
  CompletionTag write_tag_{[this](bool ok) {
    pending_.fetch_sub(1);
    OnWriteDone(ok);
    Settle();
  }};
  CompletionTag finish_tag_{[this](bool) {
    pending_.fetch_sub(1);
    finished_ = true;
    Settle();
  }};
  CompletionTag done_tag_{[this](bool) {
    call_over_ = true;
    Settle();
  }};
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LOOP_STREAM_H_
