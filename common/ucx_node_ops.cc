// UcxNode's operations: Send, Receive, ReceiveInto, Get, and how a caller
// waits for one (WaitLocked).
#include <sched.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/ucx_node.h"
#include "common/ucx_node_internal.h"

namespace dragon::common {
namespace {

constexpr ucp_tag_t kWholeTag = ~ucp_tag_t{0};

std::string Bytes(size_t n) { return absl::StrCat(n, " bytes"); }

}  // namespace

void UcxNode::OnSendDone(void* request, ucs_status_t status, void* user_data) {
  Op* op = static_cast<Op*>(user_data);
  op->done = true;
  op->status = status;
  if (op->orphaned) {
    ucp_request_free(request);
    delete op;
  }
}

void UcxNode::OnReceiveDone(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                            void* user_data) {
  Op* op = static_cast<Op*>(user_data);
  op->done = true;
  op->status = status;
  if (status == UCS_OK && info != nullptr) op->length = info->length;
  if (op->orphaned) {
    ucp_request_free(request);
    delete op;
  }
}

// While a caller spins for busy_poll, the thread that will answer it (the
// peer's, or our own progress thread) may be waiting for this very CPU: on
// a machine with few cores, spinning without letting go measured round
// trips of 140 us instead of 11. So each idle turn lets go of the lock and
// of the CPU.
void UcxNode::YieldLocked() {
  mu_.Unlock();
  sched_yield();
  mu_.Lock();
}

// The parameters of an operation that completes through OnSendDone (a send,
// a get): its Op as user data.
ucp_request_param_t UcxNode::SendParams(Op* op) {
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &UcxNode::OnSendDone;
  param.user_data = op;
  return param;
}

absl::Status UcxNode::StartedLocked(Op* op, ucs_status_ptr_t request, const Peer* peer,
                                    absl::Time deadline) {
  if (!UCS_PTR_IS_PTR(request)) {  // done at once, or failed to start
    op->done = true;
    op->status = UCS_PTR_STATUS(request);
    return absl::OkStatus();
  }
  op->request = request;
  return WaitLocked(op, peer, deadline);
}

absl::Status UcxNode::WaitLocked(Op* op, const Peer* peer, absl::Time deadline) {
  auto finished = [op, peer] { return op->done || (peer != nullptr && !peer->failure.ok()); };
  // Driving UCX ourselves for a few microseconds catches a reply that is
  // already on its way without two thread wake-ups (the progress thread's,
  // then ours): the difference between a round trip near UCX's own and one
  // several times slower.
  const absl::Time spin_end = std::min(deadline, absl::Now() + options_.busy_poll);
  bool more = false;  // the last progress call did something: maybe more to do
  while (!finished() && absl::Now() < spin_end) {
    more = ProgressLocked();
    if (!more) YieldLocked();
  }
  if (!finished()) {
    // Work that UCX may still have queued (our last progress call was not
    // idle, or a send or get we started is still being pushed out) must
    // not wait for an event UCX will not signal: the progress thread takes
    // over. A posted receive needs no such push; its message's arrival
    // signals the event fd, and not waking the thread saves two context
    // switches on every round trip that outlasts busy_poll.
    if (more || op->is_transfer) WakeProgressThread();
    mu_.AwaitWithDeadline(absl::Condition(&finished), deadline);
  }
  if (op->done) return absl::OkStatus();
  if (peer != nullptr && !peer->failure.ok()) return peer->failure;
  return absl::DeadlineExceededError("deadline");
}

void UcxNode::FinishLocked(Op* op) {
  // Called once the request completed, was cancelled, or its endpoint was
  // closed by force: UCX completes the last two at once (UCS_ERR_CANCELED).
  // The one exception, a receive already matched to a message whose sender
  // stalls, waits here with mu_ released, so that only its caller waits.
  if (!op->done) ProgressLocked();
  if (!op->done) {
    WakeProgressThread();
    mu_.Await(absl::Condition(&op->done));
  }
  if (op->request != nullptr) ucp_request_free(op->request);
  delete op;
}

absl::Status UcxNode::Send(UcxPeer handle, uint64_t tag, absl::string_view data,
                           absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Peer*> found = UsablePeerLocked(handle);
  if (!found.ok()) return found.status();
  Peer* peer = *found;
  Op* op = new Op;
  op->is_transfer = true;
  ucp_request_param_t param = SendParams(op);
  ucs_status_ptr_t request = ucp_tag_send_nbx(peer->ep, data.data(), data.size(), tag, &param);
  if (!UCS_PTR_IS_PTR(request)) {  // done at once (eager), or failed
    delete op;
    ucs_status_t status = UCS_PTR_STATUS(request);
    if (status == UCS_OK) return absl::OkStatus();
    return absl::UnavailableError(PeerMessage(
        peer->name, absl::StrCat("send of ", Bytes(data.size()), " failed (",
                                 ucs_status_string(status), ")")));
  }
  op->request = request;
  absl::Status waited = WaitLocked(op, peer, deadline);
  if (!op->done) {
    if (waited.code() == absl::StatusCode::kDeadlineExceeded) {
      waited = absl::DeadlineExceededError(PeerMessage(
          peer->name, absl::StrCat("send of ", Bytes(data.size()), " with tag ", tag,
                                   " not done within ", absl::FormatDuration(timeout),
                                   " (peer hung, unreachable or not receiving); "
                                   "connection closed")));
      peer->failure = absl::UnavailableError(waited.message());
    }
    ForceCloseLocked(peer);  // completes the send: `data` is ours again
  }
  const ucs_status_t status = op->done ? op->status : UCS_ERR_CANCELED;
  FinishLocked(op);
  if (!waited.ok()) return waited;
  if (status == UCS_OK) return absl::OkStatus();
  if (!peer->failure.ok()) return peer->failure;
  return absl::UnavailableError(
      PeerMessage(peer->name, absl::StrCat("send of ", Bytes(data.size()), " failed (",
                                           ucs_status_string(status), ")")));
}

absl::StatusOr<std::string> UcxNode::Receive(uint64_t tag, absl::Duration timeout,
                                             absl::Duration transfer_timeout) {
  return Receive(UcxPeer{0}, tag, timeout, transfer_timeout);
}

// Probes for the message first (UCX keeps it in its unexpected queue, or
// holds the rendezvous announcement of a large one), so the string can be
// sized to it and the data lands there directly.
absl::StatusOr<std::string> UcxNode::Receive(UcxPeer from, uint64_t tag, absl::Duration timeout,
                                             absl::Duration transfer_timeout) {
  absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  const Peer* peer = nullptr;
  if (from.id != 0) {
    absl::StatusOr<Peer*> found = PeerLocked(from);
    if (!found.ok()) return found.status();
    peer = *found;
  }
  const absl::Time spin_end = absl::Now() + options_.busy_poll;
  bool more = false;
  ucp_tag_recv_info_t info;
  ucp_tag_message_h message;
  for (;;) {
    message = ucp_tag_probe_nb(worker_, tag, kWholeTag, /*remove=*/1, &info);
    if (message != nullptr) break;
    // A message that arrived before its sender was lost is still delivered.
    if (peer != nullptr && !peer->failure.ok()) return peer->failure;
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "UCX: no message with tag ", tag, " within ", absl::FormatDuration(timeout)));
    }
    if (now < spin_end) {
      more = ProgressLocked();
      if (!more) YieldLocked();
      continue;
    }
    if (more) WakeProgressThread();  // as in WaitLocked
    more = false;
    const uint64_t seen = progress_epoch_;
    auto changed = [this, seen, peer]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return progress_epoch_ != seen || (peer != nullptr && !peer->failure.ok());
    };
    mu_.AwaitWithDeadline(absl::Condition(&changed), deadline);
  }

  // The message is ours from here: a short wait for it must not cut its data off.
  deadline = std::max(deadline, absl::Now() + transfer_timeout);
  Op* op = new Op;
  op->is_transfer = true;  // a rendezvous reply may need pushing out
  op->buffer.resize(info.length);
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.recv = &UcxNode::OnReceiveDone;
  param.user_data = op;
  ucs_status_ptr_t request =
      ucp_tag_msg_recv_nbx(worker_, op->buffer.data(), info.length, message, &param);
  absl::Status waited = StartedLocked(op, request, peer, deadline);
  if (!op->done) {
    // The message is ours but still coming; its sender is lost or slow.
    // The Op owns the buffer UCX writes into: leave both to the callback,
    // which frees them when UCX finishes or fails the transfer.
    op->orphaned = true;
    if (waited.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(
          absl::StrCat("UCX: message with tag ", tag, " (", Bytes(info.length),
                       ") not received completely within ", absl::FormatDuration(timeout)));
    }
    return waited;
  }
  const ucs_status_t status = op->status;
  std::string data = std::move(op->buffer);
  FinishLocked(op);
  if (status != UCS_OK) {
    if (peer != nullptr && !peer->failure.ok()) return peer->failure;
    return absl::UnavailableError(absl::StrCat("UCX: receiving the message with tag ", tag, " (",
                                               Bytes(info.length), ") failed (",
                                               ucs_status_string(status), ")"));
  }
  return data;
}

absl::StatusOr<size_t> UcxNode::ReceiveInto(uint64_t tag, absl::Span<char> buffer,
                                            absl::Duration timeout, const UcxPeer* from) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  Peer* peer = nullptr;
  if (from != nullptr) {
    absl::StatusOr<Peer*> found = PeerLocked(*from);
    if (!found.ok()) return found.status();
    peer = *found;
  }
  Op* op = new Op;
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  // UCX 1.13 does not fill UCP_OP_ATTR_FIELD_RECV_INFO when a receive
  // completes at once, and the length is needed: no immediate completion,
  // so the callback (run inside ucp_tag_recv_nbx then) always reports it.
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  param.cb.recv = &UcxNode::OnReceiveDone;
  param.user_data = op;
  // Posted before the message arrives, the receive is matched on arrival
  // and the data lands in `buffer` with no stop in UCX's unexpected queue.
  ucs_status_ptr_t request =
      ucp_tag_recv_nbx(worker_, buffer.data(), buffer.size(), tag, kWholeTag, &param);
  absl::Status waited = StartedLocked(op, request, peer, deadline);
  if (!op->done) {
    // Unmatched, the receive is cancelled at once. Matched to a message
    // still arriving, it completes when the transfer ends or its
    // connection fails: with `from`, we close that connection after
    // close_timeout; without, we wait for UCX (it has the only handle).
    ucp_request_cancel(worker_, request);
    const absl::Time grace = absl::Now() + options_.close_timeout;
    while (!op->done && absl::Now() < grace) ProgressLocked();
    if (!op->done && peer != nullptr) ForceCloseLocked(peer);
  }
  const ucs_status_t status = op->done ? op->status : UCS_ERR_CANCELED;
  const size_t length = op->length;
  FinishLocked(op);
  if (status == UCS_OK) return length;  // completed before the cancel took
  if (status == UCS_ERR_MESSAGE_TRUNCATED) {
    return absl::OutOfRangeError(absl::StrCat("UCX: message with tag ", tag,
                                              " is larger than the buffer of ",
                                              Bytes(buffer.size())));
  }
  if (!waited.ok()) {
    if (waited.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(absl::StrCat(
          "UCX: no message with tag ", tag, " within ", absl::FormatDuration(timeout)));
    }
    return waited;
  }
  if (peer != nullptr && !peer->failure.ok()) return peer->failure;
  return absl::UnavailableError(absl::StrCat("UCX: receiving the message with tag ", tag,
                                             " failed (", ucs_status_string(status), ")"));
}

absl::Status UcxNode::Get(UcxPeer handle, uint64_t remote_address, absl::string_view packed_rkey,
                          void* local, size_t length, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Peer*> found = UsablePeerLocked(handle);
  if (!found.ok()) return found.status();
  Peer* peer = *found;
  ucp_rkey_h rkey = nullptr;
  ucs_status_t status = ucp_ep_rkey_unpack(peer->ep, packed_rkey.data(), &rkey);
  if (status != UCS_OK) {
    return absl::InvalidArgumentError(PeerMessage(
        peer->name, absl::StrCat("bad remote key (", ucs_status_string(status), ")")));
  }
  Op* op = new Op;
  op->is_transfer = true;
  ucp_request_param_t param = SendParams(op);
  ucs_status_ptr_t request = ucp_get_nbx(peer->ep, local, length, remote_address, rkey, &param);
  absl::Status waited = StartedLocked(op, request, peer, deadline);
  if (!op->done) {
    if (waited.code() == absl::StatusCode::kDeadlineExceeded) {
      waited = absl::DeadlineExceededError(PeerMessage(
          peer->name, absl::StrCat("get of ", Bytes(length), " not done within ",
                                   absl::FormatDuration(timeout),
                                   " (peer hung or unreachable); connection closed")));
      peer->failure = absl::UnavailableError(waited.message());
    }
    ForceCloseLocked(peer);  // completes the get: nothing writes `local` after we return
  }
  status = op->done ? op->status : UCS_ERR_CANCELED;
  FinishLocked(op);
  ucp_rkey_destroy(rkey);
  if (!waited.ok()) return waited;
  if (status == UCS_OK) return absl::OkStatus();
  if (!peer->failure.ok()) return peer->failure;
  return absl::UnavailableError(PeerMessage(
      peer->name, absl::StrCat("get of ", Bytes(length), " from ", remote_address, " failed (",
                               ucs_status_string(status), ")")));
}

}  // namespace dragon::common
