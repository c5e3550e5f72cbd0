// The shared-memory pool of a node (issue 14, "Managed memory"): one file in
// /dev/shm that the agent creates and its workers and a client on the node
// attach by path, holding a buddy allocator (buddy_allocator.h) and the data.
// Blocks travel between processes as BlockRefs (24 bytes, fit a protobuf
// field); a reference that was freed, reused or forged out of range is an
// error, never someone else's data.
//
// Every call is safe from any thread of any process that mapped the pool:
// the allocator's state sits behind one robust process-shared mutex. A
// process killed while holding it costs nothing but its own blocks: the next
// locker repairs the allocator (BuddyAllocator::Rebuild), and the agent frees
// a dead process's blocks with ReclaimOwner.
//
// File layout: a header (magic, version, creator pid, the mutex, the wait
// sequence), the allocator's metadata, for a lazily backed pool a bitmap of
// the units whose pages are reserved, then the data, aligned to the block
// unit (and to 2 MiB when huge pages were asked for).
#ifndef DRAGON_COMMON_SHM_POOL_H_
#define DRAGON_COMMON_SHM_POOL_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/buddy_allocator.h"

namespace dragon::common {

// Named in every error about the pool being too small.
inline constexpr char kShmPoolSizeOption[] = "--shm-pool-mb";

struct ShmPoolOptions {
  std::string dir = "/dev/shm";
  // The file's name in `dir`, e.g. "dragon-pool-<run>-<host>"; no '/'.
  std::string name;
  // Rounded down to whole blocks of `min_block`.
  uint64_t size_bytes = 0;
  // The smallest block and the alignment of every block: a power of two of
  // at least 64 bytes (a cache line, so two blocks never share one).
  uint64_t min_block = 4096;
  // Fault in every page at creation (and set up the creator's page tables),
  // so the first task using a block does not pay for it.
  bool prefault = false;
  // Ask for transparent huge pages (MADV_HUGEPAGE). Whether the kernel allows
  // them for shared memory is ShmPool::huge_pages(); refusal is not an error.
  bool huge_pages = false;
  // true: the whole file is reserved (fallocated) at Create, so a pool that
  // does not fit fails there. false: Create reserves only the header and the
  // allocator's metadata, and Allocate reserves each block's range before
  // returning it, so /dev/shm holds only what was ever used (the high-water
  // mark: freed blocks keep their pages) and a full /dev/shm is an error of
  // that Allocate, never a SIGBUS in whoever touches the block. Incompatible
  // with `prefault`, which would touch (and so reserve) every page.
  bool reserve = true;
};

struct ShmPoolStats {
  uint64_t capacity_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t blocks_in_use = 0;
  uint64_t largest_free_block = 0;      // far below free_bytes: fragmented
  uint64_t largest_possible_block = 0;  // the largest request that can ever succeed
  uint64_t waiters = 0;                 // threads waiting in Allocate for space
  uint64_t repairs = 0;                 // times a process died holding the lock
};

class ShmPoolTestPeer;

class ShmPool {
 public:
  // Creates `options.dir`/`options.name` (mode 0600; an existing file is an
  // error, not reused) with all of its space reserved now (unless
  // `options.reserve` is false): a pool that does not fit in the directory's
  // file system fails here, naming the size and the option, instead of
  // killing a process with SIGBUS later.
  static absl::StatusOr<std::unique_ptr<ShmPool>> Create(const ShmPoolOptions& options);
  // Maps the pool at `path` that another process created. Errors name the
  // path: missing, not a pool, another layout version, still being created.
  static absl::StatusOr<std::unique_ptr<ShmPool>> Attach(const std::string& path);
  // Attaches the pool at `path` whose creator is dead and becomes its creator:
  // the file is this process's to remove now, and RemoveStale leaves it alone.
  // For an agent started again on its node (the launcher restarts a killed
  // one): blocks of processes still alive (a client's task arguments, a task
  // being run again) stay valid; the dead ones' are reclaimed as usual.
  // FailedPrecondition while the creator lives; Attach's errors otherwise.
  static absl::StatusOr<std::unique_ptr<ShmPool>> Adopt(const std::string& path);
  // Removes the pool files in `dir` whose names start with `prefix` and whose
  // creator is dead (a crashed agent's); returns how many. Pools of live
  // creators, pools made in another pid namespace (where the pid means
  // nothing here), other users' files and files that are not pools are left
  // alone.
  static int RemoveStale(const std::string& dir, const std::string& prefix);
  // The same for one file: true if it was a pool of a dead creator, now removed.
  static bool RemoveIfStale(const std::string& path);

  // Unmaps; the creating process also removes the file (processes that
  // attached keep their mapping until they drop it).
  ~ShmPool();
  ShmPool(const ShmPool&) = delete;
  ShmPool& operator=(const ShmPool&) = delete;

  // A block of at least `size` bytes, owned by `owner` (0: this process).
  // When no block is free, waits up to `wait` for one to be freed, then fails
  // ResourceExhausted naming the size, the pool's size and free bytes, and
  // kShmPoolSizeOption; a size no block can ever hold fails at once. In a
  // pool made with reserve=false, also ResourceExhausted (naming the
  // directory's free bytes) when the block's pages cannot be reserved.
  // A caller that dies inside Allocate leaves the block to `owner`: with
  // another process as owner it is freed only when that one is reclaimed.
  absl::StatusOr<BlockRef> Allocate(uint64_t size, absl::Duration wait = absl::ZeroDuration(),
                                    pid_t owner = 0);
  absl::Status Free(const BlockRef& ref);
  // Frees the block and returns true if it is allocated and owned by
  // `owner`; false, and nothing changes, if it is someone else's or the
  // reference is stale (the block was freed, perhaps handed out again). An
  // error only for a forged or out-of-range reference or a damaged pool.
  // For a holder that may have lost the block to a transfer or a reclaim.
  absl::StatusOr<bool> FreeIfOwner(const BlockRef& ref, pid_t owner);
  // The block's `ref.length` bytes in this process's mapping; valid until
  // the block is freed (by anyone: the pool cannot revoke a pointer).
  absl::StatusOr<absl::Span<char>> Resolve(const BlockRef& ref);
  // Hands the block to `owner` (a worker's result, to be read by the client
  // that asked for it): ReclaimOwner of the old owner no longer frees it.
  absl::Status SetOwner(const BlockRef& ref, pid_t owner);
  // SetOwner, but only from the owner the caller believes it has:
  // FailedPrecondition naming the block, its actual owner and `from`
  // otherwise (nothing changes). Stale and forged references fail as in Free.
  absl::Status TransferOwner(const BlockRef& ref, pid_t from, pid_t to);
  // Frees every block owned by `owner`, a process that died; returns the
  // bytes freed.
  absl::StatusOr<uint64_t> ReclaimOwner(pid_t owner);
  // The distinct owners of allocated blocks, ascending: for the agent's
  // janitor, which reclaims those that died.
  absl::StatusOr<std::vector<pid_t>> Owners();
  absl::StatusOr<ShmPoolStats> Stats();

  // The pool's whole data region in this process's mapping, capacity_bytes()
  // long: every BlockRef's offset is relative to its start. For handing the
  // pool to a transport in one piece (the agents' data plane registers it
  // with UCX so that other agents can Get blocks out of it, at the region's
  // address plus a block's offset). Reading or writing through it skips the
  // allocator's checks: use Resolve to reach one block.
  absl::Span<char> data_region() const {
    return absl::Span<char>(data_, allocator_.capacity_bytes());
  }

  const std::string& path() const { return path_; }
  bool creator() const { return creator_; }
  pid_t creator_pid() const;
  // The creator's start-up is over: whatever it serves beside the pool (an
  // agent's data socket `<pool>.sock`) exists now or never will. A process
  // that finds a pool as soon as its file appears waits for this instead of
  // taking a socket that is not there yet for "no data plane".
  void MarkCreatorReady();
  bool creator_ready() const;
  uint64_t capacity_bytes() const { return allocator_.capacity_bytes(); }
  // Huge pages were asked for and the kernel allows them for shared memory.
  bool huge_pages() const { return huge_pages_; }
  // Whether the whole file was reserved at creation (ShmPoolOptions::reserve).
  bool reserved() const { return reserved_; }

 private:
  friend class ShmPoolTestPeer;
  struct Header;

  ShmPool(std::string path, bool creator, int fd, char* mapping, uint64_t mapping_bytes,
          BuddyAllocator allocator);

  // Takes the pool's mutex, repairing the allocator first when its last
  // holder died with it.
  absl::Status Lock();
  void Unlock();
  Header* header() const { return reinterpret_cast<Header*>(mapping_); }
  absl::Status WithPath(const absl::Status& status) const;
  std::string Describe(const BuddyStats& stats) const;
  void WakeWaiters();
  // reserve=false: reserves the pages of `ref`'s block of `block_bytes`
  // (ours, allocated, not yet handed out); on failure frees it again and
  // returns ResourceExhausted for a request of `size` bytes.
  absl::Status ReserveBlock(const BlockRef& ref, uint64_t size, uint64_t block_bytes);
  // Maps the pages of `ref` into this process's page tables in one call the
  // first time it resolves them (see shm_pool.cc).
  void MapPages(const BlockRef& ref);

  std::string path_;
  bool creator_;
  bool huge_pages_ = false;
  bool reserved_ = true;
  std::atomic<uint64_t>* backed_ = nullptr;  // reserve=false: Header::backed_map_offset
  // This process's own map of the units whose pages it has mapped (MapPages).
  std::unique_ptr<std::atomic<uint64_t>[]> mapped_;
  // The pool file, open for the mapping's lifetime: a lazily backed pool
  // reserves blocks through it (fallocate).
  int fd_;
  dev_t device_ = 0;  // of the file the creator made: never unlink a successor
  ino_t inode_ = 0;
  char* mapping_;
  uint64_t mapping_bytes_;
  char* data_ = nullptr;
  BuddyAllocator allocator_;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_SHM_POOL_H_
