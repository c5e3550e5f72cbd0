// The layout of a pool file's header, shared by shm_pool.cc (the operations)
// and shm_pool_files.cc (creating, attaching and removing the file). Not part
// of ShmPool's interface: include shm_pool.h.
#ifndef DRAGON_COMMON_SHM_POOL_LAYOUT_H_
#define DRAGON_COMMON_SHM_POOL_LAYOUT_H_

#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "common/shm_pool.h"

namespace dragon::common {
namespace shm_pool_internal {

inline constexpr uint64_t kMagic = 0x4c4f4f504e474452;          // "DRGNPOOL" in the file
inline constexpr uint64_t kCreatingMagic = 0x54494e494e474452;  // "DRGNINIT": not ready yet
// 2: kLazyFlag. A program that knows only version 1 would use a lazily
// backed pool without reserving its blocks, so it is refused.
inline constexpr uint32_t kVersion = 2;
inline constexpr uint32_t kHugePagesFlag = 1;
inline constexpr uint32_t kLazyFlag = 2;  // ShmPoolOptions::reserve was false
// Set by the creator once it has finished starting the services beside the
// pool (an agent's data plane socket): see ShmPool::MarkCreatorReady. Old
// programs ignore it, so the version stays.
inline constexpr uint32_t kCreatorReadyFlag = 4;
inline constexpr int kWaiterSlots = 64;

// Whether `pid` runs and, when `start_time` is known (not 0), is the process
// that started then rather than a later one given the same pid.
bool ProcessAlive(pid_t pid, uint64_t start_time);

// " (<dir> has <n> bytes free)", or "" when statvfs fails: for the errors of
// a directory that cannot hold the pool.
std::string FreeSpaceOf(const std::string& dir);

}  // namespace shm_pool_internal

// Why waiting is a futex on a counter and not a pthread condition variable:
// glibc's condition variable (2.25 up to 2.40) makes a signaller wait for the
// waiters of the previous group to leave; a waiter killed inside
// pthread_cond_wait never leaves, and every later signal in any process would
// hang. A futex keeps no state for a sleeper that dies. The counter is bumped
// under the mutex whenever space is freed; a waiter reads it under the mutex
// before releasing it, so a free between that release and its sleep changes
// the counter and the sleep returns at once (no lost wake-up).
struct ShmPool::Header {
  std::atomic<uint64_t> magic;  // kCreatingMagic, then kMagic once the rest is written
  uint32_t version;
  uint32_t header_bytes;  // sizeof(Header): the same layout of the pthread types
  int32_t creator_pid;
  uint32_t flags;
  uint64_t creator_start_time;
  uint64_t creator_pid_namespace;  // inode of /proc/<pid>/ns/pid: where the pid means something
  uint64_t file_bytes;
  uint64_t metadata_offset;
  uint64_t metadata_bytes;
  uint64_t data_offset;
  uint64_t data_bytes;
  uint64_t repairs;
  pthread_mutex_t mutex;
  std::atomic<uint32_t> wake_sequence;
  // Who waits in Allocate, by pid, so that a waiter killed while asleep is
  // not counted forever (ReclaimOwner and the repair drop dead ones).
  uint32_t waiters_without_slot;
  struct {
    int32_t pid;
    uint32_t count;
  } waiters[shm_pool_internal::kWaiterSlots];
  // Lazily backed pools (kLazyFlag): one bit per unit of the data, set once
  // that unit's pages are reserved (they are never given back), so that
  // Allocate of a range that any process reserved before skips fallocate,
  // which tmpfs makes walk every page (~50 us for 2 MiB). A bit not set yet
  // only costs a redundant fallocate. Between the metadata and the data.
  uint64_t backed_map_offset;
  uint64_t backed_map_bytes;

  void AddWaiter(pid_t pid) {
    for (auto& slot : waiters) {
      if (slot.count > 0 && slot.pid == pid) {
        ++slot.count;
        return;
      }
    }
    for (auto& slot : waiters) {
      if (slot.count == 0) {
        slot = {pid, 1};
        return;
      }
    }
    ++waiters_without_slot;
  }
  void RemoveWaiter(pid_t pid) {
    for (auto& slot : waiters) {
      if (slot.count > 0 && slot.pid == pid) {
        --slot.count;
        return;
      }
    }
    if (waiters_without_slot > 0) --waiters_without_slot;
  }
  void DropWaiters(pid_t pid) {
    for (auto& slot : waiters) {
      if (slot.pid == pid) slot.count = 0;
    }
  }
  void DropDeadWaiters() {
    for (auto& slot : waiters) {
      if (slot.count > 0 && !shm_pool_internal::ProcessAlive(slot.pid, 0)) slot.count = 0;
    }
  }
  uint64_t Waiters() const {
    uint64_t total = waiters_without_slot;
    for (const auto& slot : waiters) total += slot.count;
    return total;
  }
};
static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "the futex word is the counter");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "the map of reserved units is shared");

}  // namespace dragon::common

#endif  // DRAGON_COMMON_SHM_POOL_LAYOUT_H_
