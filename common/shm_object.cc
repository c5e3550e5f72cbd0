// The shared-memory objects' common ground (ShmChannel, ShmBarrier; declared
// in shm_channel.h, namespace shm_object): process liveness, the monotonic
// clock, futex waits and the robust process-shared mutex.
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/shm_channel.h"

namespace dragon::common {
namespace {

// /proc/<pid>/stat: the state (field 3) and start time (field 22). Plain
// read(2): a waiter checks this every 100 ms.
bool ReadStat(pid_t pid, char* state, uint64_t* start) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  const int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char text[1024];
  const ssize_t n = read(fd, text, sizeof(text) - 1);
  close(fd);
  if (n <= 0) return false;
  text[n] = '\0';
  const char* at = strrchr(text, ')');  // the command name may hold spaces and ')'
  if (at == nullptr || at[1] != ' ') return false;
  *state = at[2];
  at += 2;
  for (int field = 3; field < 22; ++field) {  // to the space before field 22
    at = strchr(at, ' ');
    if (at == nullptr) return false;
    ++at;
  }
  *start = strtoull(at, nullptr, 10);
  return true;
}

}  // namespace

namespace shm_object {

uint64_t ProcessStartTime(pid_t pid) {
  char state = 0;
  uint64_t start = 0;
  return ReadStat(pid, &state, &start) ? start : 0;
}

bool ProcessRuns(pid_t pid, uint64_t start_time) {
  char state = 0;
  uint64_t start = 0;
  if (pid <= 0 || !ReadStat(pid, &state, &start)) return false;
  // A zombie has exited: its parent may be the very process waiting here.
  if (state == 'Z' || state == 'X') return false;
  return start_time == 0 || start == start_time;
}

absl::Duration MonotonicNow() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return absl::DurationFromTimespec(now);
}

void FutexWait(const void* word, uint32_t seen, absl::Duration until) {
  // Absolute on the monotonic clock (FUTEX_WAIT_BITSET), as ShmPool waits.
  const timespec at = absl::ToTimespec(until);
  syscall(SYS_futex, word, FUTEX_WAIT_BITSET, seen, &at, nullptr, FUTEX_BITSET_MATCH_ANY);
}

bool SpinWhileEqual(const std::atomic<uint32_t>& word, uint32_t seen, absl::Duration spin) {
  const absl::Duration until = MonotonicNow() + spin;
  for (int i = 0;; ++i) {
    if (word.load(std::memory_order_acquire) != seen) return true;
    // The clock is read every 64 polls: it costs more than a poll.
    if ((i & 63) == 63 && MonotonicNow() >= until) return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

void FutexWake(const void* word, int how_many) {
  syscall(SYS_futex, word, FUTEX_WAKE, how_many, nullptr, nullptr, 0);
}

void InitRobustMutex(void* mutex) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(static_cast<pthread_mutex_t*>(mutex), &attr);
  pthread_mutexattr_destroy(&attr);
}

absl::Status LockRobust(void* mutex, bool* repaired, const char* what) {
  const int locked = pthread_mutex_lock(static_cast<pthread_mutex_t*>(mutex));
  *repaired = locked == EOWNERDEAD;
  if (locked == 0 || locked == EOWNERDEAD) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("cannot lock the ", what, ": ", strerror(locked)));
}

void MarkConsistent(void* mutex) {
  pthread_mutex_consistent(static_cast<pthread_mutex_t*>(mutex));
}

void UnlockRobust(void* mutex) { pthread_mutex_unlock(static_cast<pthread_mutex_t*>(mutex)); }

absl::Status CheckAlive(ShmPool& pool, const BlockRef& ref, const char* what, pid_t creator,
                        uint64_t creator_start, pid_t peer) {
  absl::Status live = pool.Resolve(ref).status();
  if (absl::IsNotFound(live)) {
    return absl::NotFoundError(
        absl::StrCat("the ", what, " is gone (closed, or its creator exited)"));
  }
  if (!live.ok()) return live;
  if (!ProcessRuns(creator, creator_start)) {
    return absl::UnavailableError(
        absl::StrCat("the ", what, "'s creator (pid ", creator, ") exited"));
  }
  if (peer != 0 && !ProcessRuns(peer, 0)) {
    return absl::UnavailableError(absl::StrCat("peer process ", peer, " exited"));
  }
  return absl::OkStatus();
}

}  // namespace shm_object
}  // namespace dragon::common
