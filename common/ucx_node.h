// UcxNode: the UCX transport agents use to move task data agent to agent
// (issue 14, "UCX between nodes"). One UCP context and worker per process,
// tagged messages (Send/Receive) and one-sided reads (Get) from memory a peer
// registered (RegisterMemory). Addresses travel through the control plane,
// which is not this component's business: address() gives the bytes to
// publish, Connect() takes a peer's.
//
// Every call may be made from any thread, and every call that waits has a
// deadline: a caller never blocks forever. A peer that dies (its process
// killed: its TCP connection resets) fails every pending and later operation
// on it with Unavailable("UCX peer <name>: connection lost (...)") within
// milliseconds. A peer cut off while the connection is idle is failed the
// same way by TCP keepalive within seconds (UcxNodeOptions). A peer that
// hangs, or is cut off with data in flight, is not seen by UCX over TCP (the
// kernel still acknowledges, or retransmits for ~15 minutes); it is caught
// by the deadline of the operation waiting on it, which then closes the
// connection so that the peer is failed for everyone (see Send).
//
// Progress: a thread per node sleeps on the worker's event fd and drives UCX
// only when something happens, so an idle node uses no CPU. A caller waiting
// for its own operation also drives UCX for a short while (`busy_poll`)
// before it sleeps, which is what keeps a small round trip near the
// transport's own latency.
//
// Cross-namespace behaviour (a real network between two hosts, a cut link)
// belongs to the pytest suites on the netns test bed (shared/TESTBED-NETNS.md):
// there UCX_TLS=tcp,self must be set, or UCX moves the data through /dev/shm.
#ifndef DRAGON_COMMON_UCX_NODE_H_
#define DRAGON_COMMON_UCX_NODE_H_

#include <ucp/api/ucp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace dragon::common {

struct UcxNodeOptions {
  // This node's name, in UCX's own logs (the worker's name).
  std::string name = "dragon";
  // Liveness of a peer that is not killed but hung or cut off (a killed
  // process is seen at once: its kernel resets the connection).
  //
  // TCP keepalive on UCX's sockets (UCX_TCP_KEEPIDLE/KEEPINTVL/KEEPCNT): a
  // connection with nothing in flight whose peer host vanished (cable,
  // power, partition) fails after about idle + interval * count; measured
  // 4.0 s with these values between two network namespaces, the link cut
  // on an idle connection. Only on the side that opened the TCP connection:
  // UCX 1.13 sets SO_KEEPALIVE on the sockets it connects, not on those it
  // accepts (measured: the accepting side noticed nothing in 20 s).
  // Keepalive cannot work while data waits for an
  // acknowledgement (the kernel retransmits for ~15 min instead), and a
  // hung process's kernel still answers it: there the deadline of the
  // operation waiting on the peer decides (see Send), or the control
  // plane's node liveness, followed by Disconnect.
  absl::Duration tcp_keepalive_idle = absl::Seconds(2);
  absl::Duration tcp_keepalive_interval = absl::Seconds(1);
  int tcp_keepalive_count = 3;
  // UCX's own endpoint keepalive (UCX_KEEPALIVE_INTERVAL, UCX's default
  // 20 s): off by default. Over TCP it only sends a message each round and
  // notices nothing but a reset, and those messages keep the connection
  // from ever being idle, which disables TCP keepalive: with a 1 s round,
  // the cut link above went unnoticed for the 19 s measured. Set it for
  // transports without their own liveness checks.
  absl::Duration keepalive_interval = absl::InfiniteDuration();
  // UCX_TCP_TX_SEG_SIZE and RX_SEG_SIZE (default 8 KiB): the unit of UCX's
  // copied sends over TCP, which is what a Get is made of (TCP has no
  // one-sided read; the peer's progress thread answers in segments).
  // 64 KiB made a 1 MiB Get 2.5x faster on loopback (1.0 -> 2.6 GB/s), for
  // 128 KiB of buffers per connection.
  size_t tcp_segment_size = 64 << 10;
  // How long a caller waiting for its own operation drives UCX itself before
  // it sleeps and leaves progress to the node's thread. Zero: always sleep.
  // Between two test-bed hosts over TCP (bench/channel_bench.py, quiet): an
  // 8 B round trip of 27.7 us at 50 us (the peer's answer mostly came after
  // the caller slept: two context switches more) and 15.6 us at 200 us,
  // against ucx_perftest's 12.8; 1 MiB Sends 1,551 and 1,609 MB/s. The price
  // is up to this much CPU per wait for a peer that answers later.
  absl::Duration busy_poll = absl::Microseconds(200);
  // How long the destructor and Disconnect wait for an endpoint to flush
  // before closing it by force.
  absl::Duration close_timeout = absl::Seconds(1);
};

// A connection to another node, as returned by Connect. A plain value: copy
// it freely. It stays valid (failing with the peer's error once the peer is
// lost or disconnected) until the node that made it is destroyed.
struct UcxPeer {
  uint64_t id = 0;
  friend bool operator==(const UcxPeer& a, const UcxPeer& b) { return a.id == b.id; }
};

class UcxNode;

// Memory registered with the node's UCX context, which peers may Get from.
// Deregistered on destruction. Destroy regions before their node; a region
// that outlives its node was already deregistered by the node's destructor.
class UcxMemoryRegion {
 public:
  ~UcxMemoryRegion();
  UcxMemoryRegion(const UcxMemoryRegion&) = delete;
  UcxMemoryRegion& operator=(const UcxMemoryRegion&) = delete;

  // The bytes a peer passes to UcxNode::Get, with an address in the region.
  const std::string& packed_rkey() const { return packed_rkey_; }
  uint64_t address() const { return reinterpret_cast<uint64_t>(address_); }
  size_t length() const { return length_; }

 private:
  friend class UcxNode;
  UcxMemoryRegion(UcxNode* node, ucp_mem_h memh, void* address, size_t length,
                  std::string packed_rkey)
      : node_(node), memh_(memh), address_(address), length_(length),
        packed_rkey_(std::move(packed_rkey)) {}

  UcxNode* node_;  // null once the node deregistered the region itself
  ucp_mem_h memh_;
  void* address_;
  size_t length_;
  std::string packed_rkey_;
};

class UcxNode {
 public:
  // Sets up the context (tags and RMA, with wake-up events), the worker, and
  // the progress thread. UCX reads its UCX_* environment variables here
  // (UCX_TLS chooses the transports); the options override the keepalive
  // and TCP segment settings. With peer error handling, UCX 1.13 will not
  // use its shared-memory transports (posix, sysv, cma: "no peer failure
  // handler") unless UCX_POSIX_ERROR_HANDLING=y, so two processes on one
  // host talk over TCP on loopback; within a node, agents share data
  // through the pool (shm_pool.h), not UCX.
  static absl::StatusOr<std::unique_ptr<UcxNode>> Create(const UcxNodeOptions& options);

  // Closes every endpoint (flushing for up to close_timeout, then by force),
  // stops the progress thread, deregisters what is left, and releases the
  // worker and the context. No other call may run concurrently with it.
  ~UcxNode();
  UcxNode(const UcxNode&) = delete;
  UcxNode& operator=(const UcxNode&) = delete;

  // The worker's address: bytes to publish so that peers can Connect.
  const std::string& address() const { return address_; }

  // An endpoint to the worker at `peer_address`, with peer error handling:
  // its loss fails the operations on it. `peer_name` (a host, an agent id)
  // is what every error about this peer names. Returns at once; the
  // connection is set up by the first operation.
  absl::StatusOr<UcxPeer> Connect(absl::string_view peer_address, absl::string_view peer_name);
  // Flushes and closes the endpoint; a peer that does not take what is in
  // flight within close_timeout (hung, cut off) is closed by force and
  // Disconnect returns DeadlineExceeded. Either way, operations still
  // pending on the peer (in other threads) fail at once, and later ones fail
  // with FailedPrecondition("UCX peer <name>: disconnected"). This is what
  // the agent calls when the control plane declares the peer's node lost.
  // Returns within close_timeout.
  absl::Status Disconnect(UcxPeer peer);
  // OK while the peer is usable; else why not (lost, disconnected, unknown).
  absl::Status PeerStatus(UcxPeer peer) const;

  // Sends `data` with `tag` and returns once the data has left `data` (the
  // caller may reuse it). Large messages use UCX's rendezvous, which reads
  // straight from `data` once the receiver has matched the tag; so a Send
  // can wait for the receiver. A Send not done by `timeout` fails
  // DeadlineExceeded and closes the connection: UCX cannot take back a send
  // in flight, and `data` must be free when Send returns. The peer is then
  // failed for every other operation too (a peer that does not take a
  // message within the deadline is hung or unreachable).
  absl::Status Send(UcxPeer peer, uint64_t tag, absl::string_view data, absl::Duration timeout);

  // Receives the next message with `tag` from any peer, of any size,
  // straight into the returned string. DeadlineExceeded when none arrives
  // within `timeout`. With `from`, also fails as soon as that peer is lost:
  // the way to wait for a reply from a particular node.
  //
  // `transfer_timeout`: once a message has matched, how long its data may
  // take to arrive, counted from the match (zero: the same deadline as the
  // wait for it). A message matched is taken off UCX's queue, so a large one
  // still arriving when its deadline passes is lost: a server that polls for
  // requests with a short timeout gives them the time to arrive this way.
  absl::StatusOr<std::string> Receive(uint64_t tag, absl::Duration timeout,
                                      absl::Duration transfer_timeout = absl::ZeroDuration());
  absl::StatusOr<std::string> Receive(UcxPeer from, uint64_t tag, absl::Duration timeout,
                                      absl::Duration transfer_timeout = absl::ZeroDuration());
  // Receives the next message with `tag` into `buffer` (e.g. a pool block),
  // returning its length. A message longer than `buffer` is consumed and
  // fails OutOfRange. `from` as for Receive (nullptr: any peer). Since UCX
  // writes into `buffer`, a message still arriving when the deadline passes
  // is waited for: up to close_timeout, then `from`'s connection is closed
  // by force; without `from`, until UCX ends the transfer (its sender's
  // connection fails or is Disconnected). Receive has no such wait: its
  // buffer is its own.
  absl::StatusOr<size_t> ReceiveInto(uint64_t tag, absl::Span<char> buffer,
                                     absl::Duration timeout, const UcxPeer* from = nullptr);

  // Registers [address, address + length) for peers to Get from.
  absl::StatusOr<std::unique_ptr<UcxMemoryRegion>> RegisterMemory(void* address, size_t length);

  // Reads `length` bytes at `remote_address` in a region the peer registered
  // (whose packed_rkey() it sent) into `local`. Fails as Send does: the
  // peer's loss, or DeadlineExceeded (closing the connection, since the
  // transfer could otherwise still write into `local` after Get returned).
  //
  // Over TCP, UCX emulates the read with messages answered by the peer's
  // UCX, and UCX 1.13 aborts the *peer's* process (ucs_fatal in
  // ucp_request_try_send) when an answer cannot be sent because this node
  // died or its endpoint failed meanwhile. So a Get is safe only between
  // processes that die together; the agents' data plane sends blocks with
  // tagged messages instead (agent/data_plane_fetch.cc).
  absl::Status Get(UcxPeer peer, uint64_t remote_address, absl::string_view packed_rkey,
                   void* local, size_t length, absl::Duration timeout);

 private:
  struct Peer;
  struct Op;
  friend class UcxMemoryRegion;

  UcxNode(const UcxNodeOptions& options, ucp_context_h context, ucp_worker_h worker, int event_fd,
          int wake_fd, std::string address);

  void ProgressLoop();
  // Wakes the progress thread out of poll (the eventfd `wake_fd_`).
  void WakeProgressThread();
  // One pass of ucp_worker_progress by whoever holds mu_, then the work UCX
  // callbacks left for outside of UCX (closing lost peers' endpoints).
  bool ProgressLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseLostEndpointsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Closes `peer`'s endpoint by force: its pending operations complete with
  // UCS_ERR_CANCELED at once.
  void ForceCloseLocked(Peer* peer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits for `op` (a request of UCX's) until it completes, `peer` (if any)
  // is lost, or `deadline`; drives UCX for up to busy_poll first. Returns
  // with op done, or not done and the reason to stop waiting.
  absl::Status WaitLocked(Op* op, const Peer* peer, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What a UCX call that started `op` returned: done at once (or failed),
  // recorded in op; else a request, waited for as by WaitLocked.
  static ucp_request_param_t SendParams(Op* op);
  absl::Status StartedLocked(Op* op, ucs_status_ptr_t request, const Peer* peer,
                             absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits (without a deadline: UCX completes cancelled and force-closed
  // requests at once) until `op` is done, then frees its request.
  void FinishLocked(Op* op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Lets other threads have mu_ and the CPU for a moment while spinning.
  void YieldLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Closes every endpoint at shutdown, flushing each for up to close_timeout.
  void CloseAllEndpoints();
  // Waits, with mu_ released and the progress thread driving, until UCX's
  // `request` completes (true) or `deadline` passes (false).
  bool AwaitRequestLocked(void* request, absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Peer*> UsablePeerLocked(UcxPeer peer) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Peer*> PeerLocked(UcxPeer peer) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Deregister(UcxMemoryRegion* region);

  // UCX callbacks (run inside ucp calls made under mu_).
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static void OnSendDone(void* request, ucs_status_t status, void* user_data);
  static void OnReceiveDone(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                            void* user_data);

  const UcxNodeOptions options_;
  const std::string address_;
  const int event_fd_;  // the worker's (ucp_worker_get_efd)
  const int wake_fd_;   // ours: shutdown and "progress now" requests

  // One lock for the worker and all state below: the worker runs in
  // UCS_THREAD_MODE_SERIALIZED (see Create), and UCX's callbacks, which run
  // inside the ucp calls made under mu_, update operations and peers that
  // waiters read under mu_.
  mutable absl::Mutex mu_;
  ucp_context_h context_ ABSL_GUARDED_BY(mu_);
  ucp_worker_h worker_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Peer>> peers_ ABSL_GUARDED_BY(mu_);  // index = id - 1
  std::vector<Peer*> lost_ ABSL_GUARDED_BY(mu_);  // failed by UCX, endpoint not closed yet
  std::set<UcxMemoryRegion*> regions_ ABSL_GUARDED_BY(mu_);
  // Counts progress passes that did something: Receive waits for it to move
  // to probe again (UCX has no callback for an unexpected message).
  uint64_t progress_epoch_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread progress_thread_;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_UCX_NODE_H_
