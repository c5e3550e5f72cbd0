#include "client/session_client.h"

#include <unistd.h>

#include <chrono>
#include <climits>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "common/head_locator.h"
#include "common/transport.h"

namespace dragon::client {
namespace {

std::string GrpcText(const grpc::Status& s) {
  std::string text = s.error_message();
  if (text.empty()) text = absl::StrCat("gRPC status ", static_cast<int>(s.error_code()));
  return text;
}

absl::StatusCode ToAbsl(grpc::StatusCode code) {
  return static_cast<absl::StatusCode>(static_cast<int>(code));
}

// An error whose message names the head, with `detail` (what went wrong,
// without the address) as a payload for callers that compose their own text.
absl::Status Error(absl::StatusCode code, std::string message, const std::string& detail) {
  absl::Status s(code, std::move(message));
  s.SetPayload(kDetailPayload, absl::Cord(detail));
  return s;
}

// An error from a gRPC status the head or the transport ended the stream with.
absl::Status FromGrpc(const grpc::Status& st, absl::StatusCode code, std::string message) {
  absl::Status s = Error(code, std::move(message), GrpcText(st));
  s.SetPayload(kGrpcStatusPayload, absl::Cord("1"));
  return s;
}

std::string CurrentDir() {
  char buf[4096];
  if (getcwd(buf, sizeof(buf)) == nullptr) return "/";
  return buf;
}

size_t ApproxBytes(const dragon::v1::TaskSubmission& t) {
  return t.payload().size() + t.name().size() + t.data_node().size() + 24;
}

}  // namespace

SessionClient::SessionClient(SessionOptions options, SessionCallbacks callbacks)
    : options_(std::move(options)), callbacks_(std::move(callbacks)) {}

absl::StatusOr<std::unique_ptr<SessionClient>> SessionClient::Connect(SessionOptions options,
                                                                      SessionCallbacks callbacks) {
  if (absl::Status s = common::ValidateHostPort(options.address, "head"); !s.ok()) return s;
  if (options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the connect timeout must be positive");
  }
  if (options.max_batch_tasks == 0) options.max_batch_tasks = 1;
  if (options.cwd.empty()) options.cwd = CurrentDir();
  std::unique_ptr<SessionClient> client(new SessionClient(std::move(options), std::move(callbacks)));
  if (absl::Status s = client->Open(); !s.ok()) return s;
  return client;
}

absl::Status SessionClient::Open() {
  const std::string& addr = options_.address;
  common::ClientTransport transport;
  transport.token = options_.token;
  transport.tls_ca = options_.tls_ca;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = common::MakeChannel(addr, transport);
  if (!channel.ok()) return channel.status();
  channel_ = *std::move(channel);
  stub_ = dragon::v1::HeadService::NewStub(channel_);

  const absl::Time deadline = absl::Now() + options_.connect_timeout;
  // Wait for the TCP connection first so that "unreachable" is told apart
  // from "reachable but refused". A refused port shows as TRANSIENT_FAILURE
  // at once (gRPC then backs off without passing through CONNECTING).
  grpc_connectivity_state state = channel_->GetState(true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      return Error(absl::StatusCode::kUnavailable,
                   absl::StrCat("cannot reach dragond at ", addr, ": connection failed"),
                   "connection failed");
    }
    if (!channel_->WaitForStateChange(state, absl::ToChronoTime(deadline))) {
      const std::string why = absl::StrCat("no connection within ",
                                           absl::FormatDuration(options_.connect_timeout),
                                           " (is dragond running there?)");
      return Error(absl::StatusCode::kUnavailable,
                   absl::StrCat("cannot reach dragond at ", addr, ": ", why), why);
    }
    state = channel_->GetState(true);
  }

  stream_ = stub_->Session(&context_);
  dragon::v1::ClientMessage hello_msg;
  auto* hello = hello_msg.mutable_hello();
  hello->set_protocol_version(options_.protocol_version);
  hello->set_client_name(options_.client_name);
  hello->set_cwd(options_.cwd);
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  hello->set_client_host(host);
  hello->set_client_pid(getpid());
  if (options_.infra_retries.has_value()) hello->set_infra_retries(*options_.infra_retries);
  hello->set_accepted_with_results(options_.accepted_with_results);

  // A head that accepts the connection but never answers must not hang us.
  std::mutex wd_mu;
  std::condition_variable wd_cv;
  bool answered = false, timed_out = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> l(wd_mu);
    if (!wd_cv.wait_until(l, absl::ToChronoTime(deadline), [&] { return answered; })) {
      timed_out = true;
      context_.TryCancel();
    }
  });
  dragon::v1::HeadMessage reply;
  const bool ok = stream_->Write(hello_msg) && stream_->Read(&reply);
  {
    std::lock_guard<std::mutex> l(wd_mu);
    answered = true;
  }
  wd_cv.notify_all();
  watchdog.join();

  if (!ok) {
    const grpc::Status st = stream_->Finish();
    if (timed_out) {
      const std::string why =
          absl::StrCat("no Welcome within ", absl::FormatDuration(options_.connect_timeout),
                       " after Hello");
      return Error(absl::StatusCode::kDeadlineExceeded,
                   absl::StrCat("dragond at ", addr, " did not answer Hello within ",
                                absl::FormatDuration(options_.connect_timeout)),
                   why);
    }
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      return FromGrpc(st, absl::StatusCode::kUnavailable,
                      absl::StrCat("cannot reach dragond at ", addr, ": ", GrpcText(st)));
    }
    if (st.ok()) {
      return Error(absl::StatusCode::kUnavailable,
                   absl::StrCat("dragond at ", addr, " ended the session before sending Welcome"),
                   "dragond ended the session before sending Welcome");
    }
    return FromGrpc(st, ToAbsl(st.error_code()),
                    absl::StrCat("dragond at ", addr, " refused the session: ", GrpcText(st)));
  }
  if (!reply.has_welcome()) {
    context_.TryCancel();
    stream_->Finish();
    const std::string why =
        "it answered Hello with something other than Welcome; is it a dragond of the same version?";
    return Error(absl::StatusCode::kFailedPrecondition,
                 absl::StrCat("dragond at ", addr, " answered Hello with something other than "
                              "Welcome; is it a dragond of the same version?"),
                 why);
  }
  welcome_ = reply.welcome();
  if (welcome_.protocol_version() != options_.protocol_version) {
    context_.TryCancel();
    stream_->Finish();
    absl::Status mismatch = absl::FailedPreconditionError(absl::StrCat(
        "dragond at ", addr, " (", welcome_.head_version(), ") speaks protocol version ",
        welcome_.protocol_version(), " but this client speaks version ", options_.protocol_version));
    mismatch.SetPayload(kHeadProtocolPayload, absl::Cord(absl::StrCat(welcome_.protocol_version())));
    return mismatch;
  }
  sender_ = std::thread([this] { SenderLoop(); });
  receiver_ = std::thread([this] { ReceiverLoop(); });
  return absl::OkStatus();
}

SessionClient::~SessionClient() {
  // The receiver joins the sender when the stream ends: the receiver is
  // what is left to join (a joinable std::thread must not be destroyed).
  if (!joined_ && receiver_.joinable()) (void)Close(absl::Seconds(2));
}

void SessionClient::Fail(absl::Status status) {
  if (error_.ok()) error_ = std::move(status);
}

absl::Status SessionClient::AcceptingLocked() const {
  if (!error_.ok()) return error_;
  if (closing_) {
    return absl::FailedPreconditionError(
        absl::StrCat("the session with dragond at ", options_.address, " is closed"));
  }
  return absl::OkStatus();
}

absl::Status SessionClient::CheckSize(const dragon::v1::TaskSubmission& task) const {
  const uint64_t limit = welcome_.max_payload_bytes();
  if (limit == 0 || !size_check_.load() || task.payload().size() <= limit) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "task '", task.name(), "' (client_ref ", task.client_ref(), "): its payload is ",
      task.payload().size(), " bytes, more than the ", limit, " bytes dragond at ",
      options_.address, " accepts per task (dragond --max-payload-mb)"));
}

absl::Status SessionClient::Submit(dragon::v1::TaskSubmission task) {
  if (absl::Status st = CheckSize(task); !st.ok()) return st;
  bool send_inline;
  bool was_empty = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (absl::Status st = AcceptingLocked(); !st.ok()) return st;
    send_inline = MaySendInlineLocked(task);
    ++submitted_;
    if (send_inline) {
      writing_ = true;  // the stream is this thread's until SendInline ends
    } else {
      was_empty = queue_.empty();
      queue_.push_back(std::move(task));
    }
  }
  if (send_inline) {
    SendInline(std::move(task));
  } else if (was_empty) {
    send_cv_.notify_one();
  }
  return absl::OkStatus();
}

bool SessionClient::MaySendInlineLocked(const dragon::v1::TaskSubmission& task) const {
  if (writing_ || receiver_done_ || !queue_.empty() || !error_.ok()) return false;
  if (task.payload().size() > kInlineSendMaxBytes) return false;
  return submitted_ == finished_;  // nothing in flight: the sender would send it alone, at once
}

void SessionClient::SendInline(dragon::v1::TaskSubmission task) {
  dragon::v1::ClientMessage msg;
  *msg.mutable_submit()->add_tasks() = std::move(task);
  const bool ok = stream_->Write(msg);
  bool wake_sender;
  {
    std::lock_guard<std::mutex> l(mu_);
    writing_ = false;
    if (ok) {
      ++batches_sent_;
      ++tasks_sent_;
    } else {
      write_failed_ = true;  // the receiver sees the end of the stream and says why
    }
    wake_sender = !queue_.empty() || closing_ || !ok;
  }
  // The sender may be waiting for the stream (tasks queued meanwhile, or Close),
  // and the receiver may be waiting to Finish.
  if (wake_sender) send_cv_.notify_all();
  writing_cv_.notify_all();
}

absl::Status SessionClient::SubmitMany(std::vector<dragon::v1::TaskSubmission> tasks) {
  if (tasks.empty()) return absl::OkStatus();
  for (const auto& task : tasks) {
    if (absl::Status st = CheckSize(task); !st.ok()) return st;
  }
  bool was_empty;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (absl::Status st = AcceptingLocked(); !st.ok()) return st;
    was_empty = queue_.empty();
    submitted_ += tasks.size();
    if (was_empty) {
      queue_.swap(tasks);
    } else {
      for (auto& t : tasks) queue_.push_back(std::move(t));
    }
  }
  if (was_empty) send_cv_.notify_one();
  return absl::OkStatus();
}

void SessionClient::SenderLoop() {
  std::vector<dragon::v1::TaskSubmission> taken;
  dragon::v1::ClientMessage msg;
  bool write_failed = false;
  while (true) {
    {
      std::unique_lock<std::mutex> l(mu_);
      send_cv_.wait(l, [this] {
        return ((!queue_.empty() || closing_) && !writing_) || receiver_done_ || !error_.ok() ||
               write_failed_;
      });
      if (queue_.empty() || receiver_done_ || !error_.ok() || write_failed_) break;
      if (const absl::Duration wait = GatherLocked(); wait > absl::ZeroDuration()) {
        // The workers have work: let the burst gather (Close, an error or a
        // full message ends the wait early).
        const size_t full = options_.max_batch_tasks;
        send_cv_.wait_for(l, absl::ToChronoMicroseconds(wait), [this, full] {
          return closing_ || receiver_done_ || !error_.ok() || queue_.size() >= full;
        });
        if (receiver_done_ || !error_.ok()) break;
      }
      // Everything queued now; never wait for more to arrive.
      taken.swap(queue_);
      writing_ = true;
    }
    size_t i = 0;
    while (i < taken.size() && !write_failed) {
      auto* tasks = msg.mutable_submit()->mutable_tasks();
      size_t bytes = 0;
      while (i < taken.size() && static_cast<size_t>(tasks->size()) < options_.max_batch_tasks) {
        const size_t size = ApproxBytes(taken[i]);
        if (tasks->size() > 0 && bytes + size > options_.max_batch_bytes) break;
        bytes += size;
        *tasks->Add() = std::move(taken[i]);
        ++i;
      }
      const int count = tasks->size();
      if (!stream_->Write(msg)) {
        // The receiver sees the end of the stream and says why.
        write_failed = true;
        break;
      }
      msg.Clear();
      std::lock_guard<std::mutex> l(mu_);
      ++batches_sent_;
      tasks_sent_ += static_cast<uint64_t>(count);
    }
    taken.clear();
    {
      std::lock_guard<std::mutex> l(mu_);
      writing_ = false;
    }
    writing_cv_.notify_all();
    if (write_failed) break;
  }
  if (!write_failed) {
    bool send_done;
    {
      std::lock_guard<std::mutex> l(mu_);
      // Left the loop on Close with nothing queued: no inline send is under way (the
      // wait above requires !writing_), and none starts once closing_ is set.
      send_done = closing_ && !receiver_done_ && !write_failed_ && !writing_;
    }
    if (send_done) stream_->WritesDone();
  }
}

void SessionClient::ReceiverLoop() {
  dragon::v1::HeadMessage msg;
  while (stream_->Read(&msg)) {
    switch (msg.body_case()) {
      case dragon::v1::HeadMessage::kResults: {
        {
          std::lock_guard<std::mutex> l(mu_);
          finished_ += static_cast<uint64_t>(msg.results().results_size());
        }
        // Ids held by the head (accepted_with_results): before the results, as
        // an Accepted message would have been.
        if (msg.results().has_accepted() && callbacks_.on_accepted) {
          callbacks_.on_accepted(msg.results().accepted());
        }
        if (callbacks_.on_results) callbacks_.on_results(msg.mutable_results());
        break;
      }
      case dragon::v1::HeadMessage::kAccepted:
        if (callbacks_.on_accepted) callbacks_.on_accepted(msg.accepted());
        break;
      default:
        break;  // a second Welcome or something newer: nothing to do
    }
    msg.Clear();
  }
  // No more reads: stop the sender (a write now fails at once anyway)
  // before Finish, which must not race a Write.
  {
    std::lock_guard<std::mutex> l(mu_);
    receiver_done_ = true;
  }
  send_cv_.notify_all();
  if (sender_.joinable()) sender_.join();
  {
    // Nor an inline send from Submit (none starts once receiver_done_ is set).
    std::unique_lock<std::mutex> l(mu_);
    writing_cv_.wait(l, [this] { return !writing_; });
  }
  const grpc::Status st = stream_->Finish();
  absl::Status end;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (st.ok()) {
      if (!closing_) {
        end = Error(absl::StatusCode::kUnavailable,
                    absl::StrCat("dragond at ", options_.address,
                                 " ended the session (shutting down?)"),
                    "dragond ended the session stream (shutting down?)");
      }
    } else if (closing_ && st.error_code() == grpc::StatusCode::CANCELLED) {
      end = Error(absl::StatusCode::kDeadlineExceeded,
                  absl::StrCat("dragond at ", options_.address,
                               " did not end the session in time after Close"),
                  "dragond did not end the session in time after close");
    } else {
      end = FromGrpc(st, ToAbsl(st.error_code()),
                     absl::StrCat("the session with dragond at ", options_.address, " broke: ",
                                  GrpcText(st)));
    }
    if (!end.ok()) Fail(end);
    end_status_ = end;
  }
  if (callbacks_.on_end) callbacks_.on_end(end);
  {
    std::lock_guard<std::mutex> l(mu_);
    ended_cv_.notify_all();
    ended_ = true;
  }
}

absl::Status SessionClient::Close(absl::Duration timeout) {
  std::unique_lock<std::mutex> l(mu_);
  if (joined_) return end_status_;
  closing_ = true;
  send_cv_.notify_all();
  if (!ended_cv_.wait_for(l, absl::ToChronoMicroseconds(timeout), [this] { return ended_; })) {
    context_.TryCancel();
    ended_cv_.wait(l, [this] { return ended_; });
  }
  l.unlock();
  if (receiver_.joinable()) receiver_.join();
  l.lock();
  joined_ = true;
  return end_status_;
}

absl::Status SessionClient::status() const {
  std::lock_guard<std::mutex> l(mu_);
  return error_;
}

uint64_t SessionClient::batches_sent() const {
  std::lock_guard<std::mutex> l(mu_);
  return batches_sent_;
}

uint64_t SessionClient::lingers() const {
  std::lock_guard<std::mutex> l(mu_);
  return lingers_;
}

absl::Duration SessionClient::GatherLocked() {
  if (closing_ || queue_.size() >= options_.max_batch_tasks) return absl::ZeroDuration();
  // Sent and not finished: what keeps the workers busy while the burst gathers.
  const uint64_t sent = submitted_ - queue_.size();
  const uint64_t in_flight = sent > finished_ ? sent - finished_ : 0;
  if (in_flight == 0) return absl::ZeroDuration();  // a lone task goes at once
  if (options_.linger > absl::ZeroDuration() && in_flight >= options_.linger_in_flight) {
    ++lingers_;
    return options_.linger;
  }
  return options_.gather;
}

uint64_t SessionClient::tasks_sent() const {
  std::lock_guard<std::mutex> l(mu_);
  return tasks_sent_;
}

}  // namespace dragon::client
