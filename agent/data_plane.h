// DataPlane: the agent's half of "UCX between nodes" (issue 14). It moves
// blocks of shared-memory pools from one node to another, agent to agent over
// UCX (common/ucx_node.h), never through the head:
//
//  - Pull: a block of another node's pool is copied into a new block of this
//    node's pool: this agent asks the other (a Fetch request over UCX) and
//    the other sends the block's bytes, which UCX writes straight into the
//    new block. What a worker does for arguments written on the client's
//    node. (Not a UCX Get: see data_plane_fetch.cc.)
//  - Push: this agent asks the other node's agent (a request message over
//    UCX) to Pull a block of this node's pool into its own pool, and waits for
//    its answer (the new block's reference, or why not). What a worker does
//    for a result whose client is on another node.
//
// Each agent publishes (through Register, then NodeInfo) its worker address
// and its pool's size; other agents find them through a PeerDirectory (the
// head's node list). The pool's data region is also registered with UCX and
// its remote key and address published, for one-sided reads; the data plane
// itself no longer reads that way (data_plane_fetch.cc says why).
//
// Failure: a peer that dies fails the operations on it within UCX's
// detection time (a reset TCP connection: milliseconds); every call has a
// deadline; a failed peer is looked up again (refresh) on the next call, so a
// restarted agent of the same node, at a new address, is reached.
#ifndef DRAGON_AGENT_DATA_PLANE_H_
#define DRAGON_AGENT_DATA_PLANE_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/buddy_allocator.h"
#include "common/shm_pool.h"
#include "common/ucx_node.h"

namespace dragon::agent {

// What another node's agent published about its data plane.
struct PeerInfo {
  std::string node_id;
  std::string ucx_address;     // Register.ucx_address
  std::string pool_rkey;       // Register.shm_pool_rkey
  uint64_t pool_address = 0;   // Register.shm_pool_address
  // Register.shm_pool_bytes, the size of the registered region: a Pull of a
  // range past it is refused before UCX reads anything (0: not known, no
  // check).
  uint64_t pool_bytes = 0;
};

// Where the data planes of other nodes are. Implementations: the head's node
// list (HeadPeerDirectory, agent/peer_directory.h); a map in unit tests.
class PeerDirectory {
 public:
  virtual ~PeerDirectory() = default;
  // The data plane of `node_id`. NotFound (naming the node) when there is no
  // such node or it has no data plane (no pool, --noucx). `refresh`: do not
  // answer from a cache (the peer failed; it may have restarted elsewhere).
  virtual absl::StatusOr<PeerInfo> Lookup(const std::string& node_id, bool refresh) = 0;
};

// Answers another agent's Call (see DataPlane::Call): `from_node` sent
// `payload`; the returned bytes, or the error's code and message, go back.
// Runs on one of the data plane's call threads: it may block (briefly).
using CallHandler =
    std::function<absl::StatusOr<std::string>(const std::string& from_node, std::string payload)>;

struct DataPlaneOptions {
  std::string node_id;  // this node's (names it in the requests it sends)
  common::UcxNodeOptions ucx;
  // Threads that serve other agents' Push requests (each pulls one block at
  // a time).
  int request_threads = 4;
  // Threads that send blocks of this pool to the data planes that Pull them
  // (each sends one block at a time). Apart from the Push threads: a Push is
  // served by a Pull from its requester, whose fetch threads must be free.
  int fetch_threads = 4;
  // The deadline of a call made with a zero timeout.
  absl::Duration default_timeout = absl::Seconds(30);
  // What this agent answers to other agents' Calls (the Dictionary's shard
  // operations); none: every Call is refused Unimplemented. The threads that
  // run it, apart from the Push threads so that neither waits on the other.
  CallHandler call_handler;
  int call_threads = 2;
};

class DataPlane {
 public:
  // Opens the UCX worker, registers `pool`'s data region, and starts the
  // threads that answer other agents' requests. `pool` and `peers` must
  // outlive the DataPlane.
  static absl::StatusOr<std::unique_ptr<DataPlane>> Start(common::ShmPool* pool,
                                                          PeerDirectory* peers,
                                                          const DataPlaneOptions& options);
  // Stops answering requests (requests in flight fail on their senders'
  // side), closes every connection, deregisters the pool.
  ~DataPlane();
  DataPlane(const DataPlane&) = delete;
  DataPlane& operator=(const DataPlane&) = delete;

  // What Register publishes.
  const std::string& ucx_address() const;
  const std::string& pool_rkey() const;
  uint64_t pool_address() const;

  // Copies the first `size` bytes of block `ref` of node `node_id`'s pool
  // into a new block of this node's pool owned by `owner` (a process on this
  // node), and returns the new block. `node_id` == this node: a local copy.
  // Errors: NotFound (the directory's), Unavailable (the peer is lost,
  // naming it), ResourceExhausted (this pool has no room: ShmPool's error),
  // InvalidArgument (size larger than the block, or a block past the end of
  // the other node's pool), DeadlineExceeded. On any
  // error no new block is left allocated.
  absl::StatusOr<common::BlockRef> Pull(const std::string& node_id, const common::BlockRef& ref,
                                        uint64_t size, pid_t owner,
                                        absl::Duration timeout = absl::ZeroDuration());

  // Has node `node_id`'s agent Pull the first `size` bytes of block `ref` of
  // this node's pool into a new block of its pool, owned there by `owner`,
  // and returns that block's reference (in node_id's pool). The source block
  // is left as it is (its owner frees it). Errors: as Pull's, the other
  // agent's errors passed on with their code and naming that node.
  absl::StatusOr<common::BlockRef> Push(const std::string& node_id, const common::BlockRef& ref,
                                        uint64_t size, pid_t owner,
                                        absl::Duration timeout = absl::ZeroDuration());

  // A request and its answer, to node `node_id`'s agent: its call_handler
  // gets `payload` and this node's id, and what it returns comes back (an
  // error with its code, the message prefixed by the node). `node_id` ==
  // this node: this agent's handler, called here. Errors of the exchange
  // itself as for Push (NotFound, Unavailable naming the node,
  // DeadlineExceeded). Used to forward the Dictionary's operations to the
  // agent that holds a key's shard.
  absl::StatusOr<std::string> Call(const std::string& node_id, std::string payload,
                                   absl::Duration timeout = absl::ZeroDuration());

 private:
  class Impl;
  explicit DataPlane(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_DATA_PLANE_H_
