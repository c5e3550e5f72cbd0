// DataPlane's insides, shared by data_plane.cc (start, peers, Pull, Push),
// data_plane_requests.cc (the threads that serve other agents' Push
// requests), data_plane_fetch.cc (a Pull's transfer, both sides) and
// data_plane_calls.cc (Call). Not for use outside those files.
#ifndef DRAGON_AGENT_DATA_PLANE_IMPL_H_
#define DRAGON_AGENT_DATA_PLANE_IMPL_H_

#include <sys/types.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/data_plane.h"
#include "common/buddy_allocator.h"
#include "common/shm_pool.h"
#include "common/ucx_node.h"

namespace dragon::agent {

// The request-serving threads' timing, shared by Push, Fetch and Call:
// - how long a serving thread waits for a request before it looks whether
//   the data plane is stopping (the destructor's wait for the threads) and
//   does its housekeeping;
inline constexpr absl::Duration kRequestPoll = absl::Milliseconds(100);
// - the least time an answer (and a Fetch's data) gets to leave, even past
//   the requester's deadline: its clock is not ours, and a requester that
//   gave up drains late answers within one kRequestPoll of its threads;
inline constexpr absl::Duration kAnswerMinTimeout = absl::Seconds(2);
// - how long a request that stopped waiting is remembered, so that its late
//   answer is taken off UCX's queue rather than kept there forever (past
//   this its server is gone or has dropped it).
inline constexpr absl::Duration kAbandonedWatch = absl::Minutes(5);

// "block (offset 4096, 8192 bytes, generation 3)", for messages and logs.
std::string DescribeBlock(const common::BlockRef& ref);
// `status` with `context` before its message ("<context>: <message>").
absl::Status WithContext(const absl::Status& status, absl::string_view context);
// FailedPrecondition naming `owner` and `node_id` when no process `owner`
// lives on this node (a new block would belong to nobody until the janitor
// noticed); OK for 0 (this process) and for processes of other users.
absl::Status CheckOwnerAlive(pid_t owner, const std::string& node_id);

class DataPlane::Impl {
 public:
  Impl(common::ShmPool* pool, PeerDirectory* directory, const DataPlaneOptions& options,
       std::unique_ptr<common::UcxNode> node, std::unique_ptr<common::UcxMemoryRegion> region);
  // Stops the request threads (after failing what they are waiting on),
  // then deregisters the pool and closes the node.
  ~Impl();

  void StartRequestThreads();
  // data_plane_fetch.cc: the threads that send blocks of this pool to the
  // data planes that Pull them.
  void StartFetchThreads();

  const std::string& ucx_address() const { return node_->address(); }
  const std::string& pool_rkey() const { return region_->packed_rkey(); }
  uint64_t pool_address() const { return region_->address(); }

  absl::StatusOr<common::BlockRef> Pull(const std::string& node_id, const common::BlockRef& ref,
                                        uint64_t size, pid_t owner, absl::Duration timeout);
  absl::StatusOr<common::BlockRef> Push(const std::string& node_id, const common::BlockRef& ref,
                                        uint64_t size, pid_t owner, absl::Duration timeout);

  // data_plane_calls.cc: DataPlane::Call and the threads that answer others'.
  void StartCallThreads();
  // Makes the call threads return (receivers within kCallPoll; answering
  // threads once the queue is empty). The destructor joins them.
  void StopCallThreads();
  absl::StatusOr<std::string> Call(const std::string& node_id, std::string payload,
                                   absl::Duration timeout);

 private:
  // An open endpoint to another node's agent and what the directory said
  // about it when it was opened.
  struct Connection {
    PeerInfo info;
    common::UcxPeer peer;
  };

  absl::Time DeadlineOf(absl::Duration timeout) const;

  // The connection to `node_id`: the one in use, else a new one to where the
  // directory says the node is (asked afresh when the last one was lost).
  absl::StatusOr<Connection> ConnectionTo(const std::string& node_id);
  // Connects to `info` and keeps the connection for `node_id`, unless
  // another thread got there first (then theirs is used).
  absl::StatusOr<Connection> Install(const std::string& node_id, const PeerInfo& info);
  // When `connection` is no longer usable (lost, closed after a deadline),
  // forgets it, disconnects it, and makes the next ConnectionTo ask the
  // directory afresh. Returns whether it was unusable.
  bool DropIfUnusable(const std::string& node_id, const Connection& connection);
  // Runs `operation` on the connection to `node_id`. If it fails because the
  // peer was lost and the directory now has the node elsewhere (its agent
  // restarted), runs it once more there.
  template <typename T>
  absl::StatusOr<T> OnPeer(const std::string& node_id, absl::Time deadline,
                           const std::function<absl::StatusOr<T>(const Connection&)>& operation) {
    absl::StatusOr<Connection> connection = ConnectionTo(node_id);
    if (!connection.ok()) return connection.status();
    absl::StatusOr<T> result = operation(*connection);
    if (result.ok()) return result;
    std::optional<absl::StatusOr<Connection>> again =
        RetryAfterLoss(node_id, deadline, *connection, result.status());
    if (!again.has_value()) return result;
    if (!again->ok()) return again->status();
    result = operation(**again);
    if (!result.ok()) DropIfUnusable(node_id, **again);
    return result;
  }
  // After `failed` (the connection `error` came from): nothing when the
  // operation is not worth a second try (not a loss, no time left, or the
  // node has not moved), else the connection to try again on (or why none).
  std::optional<absl::StatusOr<Connection>> RetryAfterLoss(const std::string& node_id,
                                                           absl::Time deadline,
                                                           const Connection& failed,
                                                           const absl::Status& error);

  absl::StatusOr<common::BlockRef> PullLocal(const common::BlockRef& ref, uint64_t size,
                                             pid_t owner);
  absl::StatusOr<common::BlockRef> PullRemote(const Connection& connection,
                                              const common::BlockRef& ref, uint64_t size,
                                              pid_t owner, absl::Time deadline);
  // data_plane_fetch.cc: has the peer send the first `size` bytes of its
  // block `ref` into `target` (a block of this pool).
  absl::Status FetchRemote(const Connection& connection, const common::BlockRef& ref,
                           uint64_t size, absl::Span<char> target, absl::Time deadline);
  absl::StatusOr<common::BlockRef> PushRemote(const Connection& connection,
                                              const common::BlockRef& ref, uint64_t size,
                                              pid_t owner, absl::Time deadline);
  // Frees a block this data plane allocated and nobody will learn of.
  void Discard(const common::BlockRef& ref, absl::string_view why);

  // data_plane_requests.cc: the request threads' loop, one request, and
  // the reply to its sender.
  void ServeRequests();
  // A request thread's loop: receives requests with `tag` (`what` in logs)
  // and serves each; between them (every kRequestPoll when idle) runs `idle`
  // and returns once the data plane stops.
  void PollRequests(uint64_t tag, absl::string_view what,
                    const std::function<void(absl::string_view)>& serve,
                    const std::function<void()>& idle);
  // Takes the answers that came after their Push stopped waiting (UCX would
  // keep them forever otherwise); gives up on an id after a while.
  void DrainAbandonedReplies();
  void Serve(absl::string_view message);
  void Reply(const std::string& requester, uint64_t request_id,
             const absl::StatusOr<common::BlockRef>& result, absl::Time deadline);

  common::ShmPool* const pool_;
  PeerDirectory* const directory_;
  const DataPlaneOptions options_;
  std::unique_ptr<common::UcxNode> node_;
  std::unique_ptr<common::UcxMemoryRegion> region_;

  absl::Mutex mu_;
  std::map<std::string, Connection> connections_ ABSL_GUARDED_BY(mu_);
  // Nodes whose last connection was lost: the directory is asked afresh.
  std::set<std::string> stale_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::vector<std::thread> request_threads_;

  // data_plane_fetch.cc: the serving side of a Fetch, and the requests that
  // stopped waiting for the data they asked for.
  void ServeFetches();
  void ServeFetch(absl::string_view message);
  // The bytes (or the refusal) of `request`, sent to its requester.
  absl::Status SendFetched(const Connection& requester, uint64_t request_id,
                           const absl::StatusOr<absl::Span<const char>>& data,
                           absl::Time deadline);
  void DrainAbandonedFetches();
  std::vector<std::thread> fetch_threads_;
  struct AbandonedFetch {
    absl::Time since;
    bool served = false;  // its reply came saying the data follows
  };
  absl::Mutex abandoned_fetches_mu_;
  std::map<uint64_t, AbandonedFetch> abandoned_fetches_ ABSL_GUARDED_BY(abandoned_fetches_mu_);

  // data_plane_calls.cc.
  absl::StatusOr<std::string> CallRemote(const Connection& connection, const std::string& payload,
                                         absl::Time deadline);
  absl::StatusOr<std::string> Answer(const std::string& from_node, std::string payload);
  void ReceiveCalls();
  void AnswerCalls();
  void ServeCall(absl::string_view message);
  void DrainAbandonedCalls();
  std::vector<std::thread> call_threads_;
  // Requests received and not yet taken by an answering thread.
  absl::Mutex calls_mu_;
  std::deque<std::string> call_queue_ ABSL_GUARDED_BY(calls_mu_);
  bool calls_stopping_ ABSL_GUARDED_BY(calls_mu_) = false;
  absl::Mutex abandoned_calls_mu_;
  std::map<uint64_t, absl::Time> abandoned_calls_ ABSL_GUARDED_BY(abandoned_calls_mu_);

  // Pushes that stopped waiting for their answer: request id -> when.
  absl::Mutex abandoned_mu_;
  std::map<uint64_t, absl::Time> abandoned_replies_ ABSL_GUARDED_BY(abandoned_mu_);
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_DATA_PLANE_IMPL_H_
