// UcxNode: setup, the progress thread, peers, memory registration, shutdown.
// The operations (Send, Receive, Get) are in ucx_node_ops.cc.
#include "common/ucx_node.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/ucx_node_internal.h"

namespace dragon::common {
namespace {

absl::Status UcxError(absl::string_view what, ucs_status_t status) {
  return absl::InternalError(absl::StrCat(what, ": ", ucs_status_string(status)));
}

// A duration as UCX's configuration parser reads it.
std::string UcxTime(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return "inf";
  return absl::StrCat(absl::ToInt64Microseconds(d), "us");
}

// UCX_TLS lets the tcp transport in: unset, "all", an exclusion list
// ("^posix"), or a list naming tcp.
bool TcpMayBeUsed() {
  const char* tls = getenv("UCX_TLS");
  if (tls == nullptr || tls[0] == '\0' || tls[0] == '^') return true;
  absl::string_view list(tls);
  return absl::StrContains(list, "tcp") || absl::StrContains(list, "all");
}

// Frees UCX objects made before a later step of Create failed.
struct SetupGuard {
  ucp_config_t* config = nullptr;
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  int wake_fd = -1;
  ~SetupGuard() {
    if (config != nullptr) ucp_config_release(config);
    if (worker != nullptr) ucp_worker_destroy(worker);
    if (context != nullptr) ucp_cleanup(context);
    if (wake_fd >= 0) close(wake_fd);
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<UcxNode>> UcxNode::Create(const UcxNodeOptions& options) {
  SetupGuard guard;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &guard.config);
  if (status != UCS_OK) return UcxError("UCX: reading the configuration", status);
  // Transport settings go by their names without the transport's prefix
  // (UCX_TCP_KEEPIDLE is "KEEPIDLE" here): ucp_config_modify hands names it
  // does not know to each transport's table.
  std::vector<std::pair<const char*, std::string>> settings = {
      {"KEEPALIVE_INTERVAL", UcxTime(options.keepalive_interval)},
      // The posix shared-memory transport names its segments
      // /dev/shm/ucx_shm_posix_<id>. With the proc link, each file is
      // unlinked right after it is opened and peers map it through
      // /proc/<pid>/fd, so nothing stays in /dev/shm however the process
      // ends (but for a kill in the microseconds between open and unlink).
      // It is UCX's default; set here so that an environment cannot turn it off.
      {"USE_PROC_LINK", "y"},
  };
  if (TcpMayBeUsed()) {  // else UCX warns that the settings went unused
    settings.push_back({"KEEPIDLE", UcxTime(options.tcp_keepalive_idle)});
    settings.push_back({"KEEPINTVL", UcxTime(options.tcp_keepalive_interval)});
    settings.push_back({"KEEPCNT", std::to_string(options.tcp_keepalive_count)});
    settings.push_back({"TX_SEG_SIZE", std::to_string(options.tcp_segment_size)});
    settings.push_back({"RX_SEG_SIZE", std::to_string(options.tcp_segment_size)});
  }
  for (const auto& [name, value] : settings) {
    status = ucp_config_modify(guard.config, name, value.c_str());
    if (status != UCS_OK) {
      return UcxError(absl::StrCat("UCX: setting ", name, "=", value), status);
    }
  }

  ucp_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask =
      UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
  // TAG for messages, RMA for Get, WAKEUP for the event fd the progress
  // thread sleeps on.
  params.features = UCP_FEATURE_TAG | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 0;  // one worker per context
  params.name = options.name.c_str();
  status = ucp_init(&params, guard.config, &guard.context);
  if (status != UCS_OK) return UcxError("UCX: ucp_init", status);
  ucp_config_release(guard.config);
  guard.config = nullptr;

  // Thread mode SERIALIZED: several threads use the worker (callers and the
  // progress thread), never two at once, since every ucp call is made under
  // UcxNode::mu_. That lock is needed anyway: UCX's callbacks update the
  // operations and peers that callers wait on, and one lock for both keeps
  // "completed" and "woken" in step. MULTI would add UCX's own lock on
  // every call for nothing; SINGLE would be wrong (UCX may then assume the
  // creating thread only).
  ucp_worker_params_t worker_params;
  std::memset(&worker_params, 0, sizeof(worker_params));
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_NAME;
  worker_params.thread_mode = UCS_THREAD_MODE_SERIALIZED;
  worker_params.name = options.name.c_str();
  status = ucp_worker_create(guard.context, &worker_params, &guard.worker);
  if (status != UCS_OK) return UcxError("UCX: ucp_worker_create", status);

  int event_fd = -1;
  status = ucp_worker_get_efd(guard.worker, &event_fd);
  if (status != UCS_OK) return UcxError("UCX: ucp_worker_get_efd", status);
  guard.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (guard.wake_fd < 0) {
    return absl::InternalError(absl::StrCat("UCX: eventfd: ", std::strerror(errno)));
  }

  ucp_address_t* raw_address = nullptr;
  size_t address_length = 0;
  status = ucp_worker_get_address(guard.worker, &raw_address, &address_length);
  if (status != UCS_OK) return UcxError("UCX: ucp_worker_get_address", status);
  std::string address(reinterpret_cast<const char*>(raw_address), address_length);
  ucp_worker_release_address(guard.worker, raw_address);

  std::unique_ptr<UcxNode> node(new UcxNode(options, guard.context, guard.worker, event_fd,
                                            guard.wake_fd, std::move(address)));
  guard.context = nullptr;
  guard.worker = nullptr;
  guard.wake_fd = -1;
  node->progress_thread_ = std::thread([n = node.get()] { n->ProgressLoop(); });
  return node;
}

UcxNode::UcxNode(const UcxNodeOptions& options, ucp_context_h context, ucp_worker_h worker,
                 int event_fd, int wake_fd, std::string address)
    : options_(options),
      address_(std::move(address)),
      event_fd_(event_fd),
      wake_fd_(wake_fd),
      context_(context),
      worker_(worker) {}

UcxNode::~UcxNode() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  WakeProgressThread();
  if (progress_thread_.joinable()) progress_thread_.join();
  CloseAllEndpoints();
  absl::MutexLock lock(&mu_);
  for (UcxMemoryRegion* region : regions_) {
    ucp_mem_unmap(context_, region->memh_);
    region->node_ = nullptr;
  }
  regions_.clear();
  ucp_worker_destroy(worker_);
  ucp_cleanup(context_);
  close(wake_fd_);
}

void UcxNode::WakeProgressThread() {
  const uint64_t one = 1;
  // A full counter (never, at 2^64 - 2) or EINTR would only mean a wake-up
  // is already pending; nothing to handle.
  (void)!write(wake_fd_, &one, sizeof(one));
}

// The progress thread. It drives UCX until UCX has nothing left to do, arms
// the worker, and sleeps in poll on the worker's event fd and our wake fd.
//
// The race between "nothing to do" and "asleep": an event that arrives after
// the last ucp_worker_progress but before ucp_worker_arm makes the arm fail
// with UCS_ERR_BUSY, and we progress again instead of sleeping; an event
// that arrives after a successful arm makes the event fd readable, so poll
// returns at once. Both checks happen under mu_, so no caller's progress can
// slip in between them unseen. What UCX does not signal on the event fd is
// work that callers start (a send that could not go out at once, a new
// endpoint's wire-up): those callers write the wake fd before they sleep,
// and this loop progresses again. UCX's keepalive rounds (when enabled,
// see UcxNodeOptions) run inside ucp_worker_progress; with
// UCP_FEATURE_WAKEUP, UCX adds a timer fd to the event fd that fires each
// keepalive interval, so the rounds happen while we sleep here without a
// poll timeout of our own. TCP keepalive is the kernel's and needs nothing.
void UcxNode::ProgressLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      while (ProgressLocked()) {
      }
      ucs_status_t status = ucp_worker_arm(worker_);
      if (status == UCS_ERR_BUSY) continue;  // new events: progress again
      if (status != UCS_OK) {
        // Not expected; fall back to polling with a short sleep so that the
        // node keeps working (slowly) rather than stopping.
        mu_.Unlock();
        usleep(1000);
        mu_.Lock();
        continue;
      }
    }
    pollfd fds[2] = {{event_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0 && errno != EINTR) usleep(1000);
    if (fds[1].revents & POLLIN) {
      uint64_t count;
      (void)!read(wake_fd_, &count, sizeof(count));
    }
  }
}

bool UcxNode::ProgressLocked() {
  bool progressed = ucp_worker_progress(worker_) != 0;
  if (progressed) ++progress_epoch_;
  if (!lost_.empty()) CloseLostEndpointsLocked();
  return progressed;
}

// UCX asks that an endpoint it failed be closed by force; not from inside
// its own callback, so after the progress call that ran it.
void UcxNode::CloseLostEndpointsLocked() {
  std::vector<Peer*> lost;
  lost.swap(lost_);
  for (Peer* peer : lost) ForceCloseLocked(peer);
}

void UcxNode::ForceCloseLocked(Peer* peer) {
  if (peer->ep == nullptr) return;
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t request = ucp_ep_close_nbx(peer->ep, &param);
  peer->ep = nullptr;
  // A force close completes at once; should UCX still hand back a request,
  // it is released when it completes.
  if (UCS_PTR_IS_PTR(request)) ucp_request_free(request);
}

void UcxNode::OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  Peer* peer = static_cast<Peer*>(arg);
  UcxNode* node = peer->node;
  node->mu_.AssertHeld();
  if (peer->failure.ok()) {
    peer->failure = absl::UnavailableError(PeerMessage(
        peer->name, absl::StrCat("connection lost (", ucs_status_string(status), ")")));
  }
  if (peer->ep == ep) node->lost_.push_back(peer);
}

absl::StatusOr<UcxPeer> UcxNode::Connect(absl::string_view peer_address,
                                         absl::string_view peer_name) {
  if (peer_address.empty()) {
    return absl::InvalidArgumentError(
        PeerMessage(std::string(peer_name), "empty address (not a UCX worker address)"));
  }
  absl::MutexLock lock(&mu_);
  auto peer = std::make_unique<Peer>();
  peer->node = this;
  peer->id = peers_.size() + 1;
  peer->name = std::string(peer_name);
  ucp_ep_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_NAME;
  params.address = reinterpret_cast<const ucp_address_t*>(peer_address.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &UcxNode::OnEndpointError;
  params.err_handler.arg = peer.get();
  params.name = peer->name.c_str();
  ucs_status_t status = ucp_ep_create(worker_, &params, &peer->ep);
  if (status != UCS_OK) {
    return absl::UnavailableError(
        PeerMessage(peer->name, absl::StrCat("cannot connect (", ucs_status_string(status), ")")));
  }
  UcxPeer handle{peer->id};
  peers_.push_back(std::move(peer));
  // The wire-up has started; the progress thread carries it on.
  WakeProgressThread();
  return handle;
}

absl::StatusOr<UcxNode::Peer*> UcxNode::PeerLocked(UcxPeer peer) const {
  if (peer.id == 0 || peer.id > peers_.size()) {
    return absl::NotFoundError(absl::StrCat("UCX peer #", peer.id, ": not connected by this node"));
  }
  return peers_[peer.id - 1].get();
}

absl::StatusOr<UcxNode::Peer*> UcxNode::UsablePeerLocked(UcxPeer peer) const {
  absl::StatusOr<Peer*> p = PeerLocked(peer);
  if (!p.ok()) return p;
  if (!(*p)->failure.ok()) return (*p)->failure;
  if ((*p)->closing) {
    return absl::FailedPreconditionError(PeerMessage((*p)->name, "disconnected"));
  }
  return p;
}

absl::Status UcxNode::PeerStatus(UcxPeer peer) const {
  absl::MutexLock lock(&mu_);
  return UsablePeerLocked(peer).status();
}

bool UcxNode::AwaitRequestLocked(void* request, absl::Time deadline) {
  auto finished = [request] { return ucp_request_check_status(request) != UCS_INPROGRESS; };
  if (finished()) return true;
  // The progress thread drives it; mu_ is free for everyone else meanwhile.
  WakeProgressThread();
  return mu_.AwaitWithDeadline(absl::Condition(&finished), deadline);
}

absl::Status UcxNode::Disconnect(UcxPeer handle) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Peer*> found = PeerLocked(handle);
  if (!found.ok()) return found.status();
  Peer* peer = *found;
  const absl::Status disconnected =
      absl::FailedPreconditionError(PeerMessage(peer->name, "disconnected"));
  if (peer->ep == nullptr || !peer->failure.ok() || peer->closing) {
    if (peer->failure.ok()) peer->failure = disconnected;
    return absl::OkStatus();
  }
  // No new operations from here; those in flight may finish during the
  // flush. Flush first, with a bound: a close in flush mode cannot be turned
  // into a forced one later, and a hung peer would hold it (and the
  // callers still waiting on this peer) indefinitely.
  peer->closing = true;
  const absl::Time deadline = absl::Now() + options_.close_timeout;
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  ucs_status_ptr_t flush = ucp_ep_flush_nbx(peer->ep, &param);
  bool flushed = !UCS_PTR_IS_PTR(flush) || AwaitRequestLocked(flush, deadline);
  // Lost meanwhile (UCX's error callback): leave its failure, it says more.
  if (peer->failure.ok()) peer->failure = disconnected;
  absl::Status result;
  if (peer->ep == nullptr) {
    // Lost during the flush; UCX's error path has closed it already.
  } else if (flushed) {
    ucs_status_ptr_t close = ucp_ep_close_nbx(peer->ep, &param);  // flush mode: nothing left
    peer->ep = nullptr;
    // Should the peer vanish now, the close goes on without us; UCX
    // releases the request when it ends (at the latest with the worker).
    if (UCS_PTR_IS_PTR(close)) {
      AwaitRequestLocked(close, deadline);
      ucp_request_free(close);
    }
  } else {
    // Completes whatever is still pending on the peer (UCS_ERR_CANCELED):
    // the callers waiting for it return the peer's failure.
    ForceCloseLocked(peer);
    result = absl::DeadlineExceededError(PeerMessage(
        peer->name, absl::StrCat("not flushed within ",
                                 absl::FormatDuration(options_.close_timeout),
                                 "; connection closed by force")));
  }
  if (UCS_PTR_IS_PTR(flush)) ucp_request_free(flush);
  return result;
}

void UcxNode::CloseAllEndpoints() {
  absl::MutexLock lock(&mu_);
  std::vector<void*> closing;
  for (const auto& peer : peers_) {
    if (peer->ep == nullptr) continue;
    if (!peer->failure.ok()) {
      ForceCloseLocked(peer.get());
      continue;
    }
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof(param));
    ucs_status_ptr_t request = ucp_ep_close_nbx(peer->ep, &param);
    peer->ep = nullptr;
    if (UCS_PTR_IS_PTR(request)) closing.push_back(request);
  }
  const absl::Time deadline = absl::Now() + options_.close_timeout;
  auto all_closed = [&closing] {
    for (void* request : closing) {
      if (ucp_request_check_status(request) == UCS_INPROGRESS) return false;
    }
    return true;
  };
  while (!all_closed() && absl::Now() < deadline) ProgressLocked();
  // Endpoints not flushed by now (a hung peer) are destroyed with the worker.
  for (void* request : closing) ucp_request_free(request);
}

absl::StatusOr<std::unique_ptr<UcxMemoryRegion>> UcxNode::RegisterMemory(void* address,
                                                                        size_t length) {
  if (address == nullptr || length == 0) {
    return absl::InvalidArgumentError("UCX: RegisterMemory needs a non-empty region");
  }
  absl::MutexLock lock(&mu_);
  ucp_mem_map_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  params.address = address;
  params.length = length;
  ucp_mem_h memh = nullptr;
  ucs_status_t status = ucp_mem_map(context_, &params, &memh);
  if (status != UCS_OK) {
    return UcxError(absl::StrCat("UCX: registering ", length, " bytes"), status);
  }
  void* packed = nullptr;
  size_t packed_length = 0;
  status = ucp_rkey_pack(context_, memh, &packed, &packed_length);
  if (status != UCS_OK) {
    ucp_mem_unmap(context_, memh);
    return UcxError("UCX: packing a remote key", status);
  }
  std::string rkey(static_cast<const char*>(packed), packed_length);
  ucp_rkey_buffer_release(packed);
  std::unique_ptr<UcxMemoryRegion> region(
      new UcxMemoryRegion(this, memh, address, length, std::move(rkey)));
  regions_.insert(region.get());
  return region;
}

void UcxNode::Deregister(UcxMemoryRegion* region) {
  absl::MutexLock lock(&mu_);
  if (regions_.erase(region) == 0) return;
  ucp_mem_unmap(context_, region->memh_);
}

UcxMemoryRegion::~UcxMemoryRegion() {
  if (node_ != nullptr) node_->Deregister(this);
}

}  // namespace dragon::common
