#include "common/shm_pool.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/shm_pool_layout.h"

// Creating, attaching and removing pool files (the operations on a mapped
// pool are in shm_pool.cc).
namespace dragon::common {
namespace {

using shm_pool_internal::kCreatingMagic;
using shm_pool_internal::FreeSpaceOf;
using shm_pool_internal::kHugePagesFlag;
using shm_pool_internal::kLazyFlag;
using shm_pool_internal::kCreatorReadyFlag;
using shm_pool_internal::kMagic;
using shm_pool_internal::kVersion;
using shm_pool_internal::ProcessAlive;

constexpr uint64_t kHugePageBytes = 2 << 20;

uint64_t RoundUp(uint64_t value, uint64_t to) { return (value + to - 1) / to * to; }

std::string Errno(int err) { return strerror(err); }

// Clock ticks after boot at which `pid` started (/proc/<pid>/stat, field
// 22): with the pid it names a process even after the pid is reused. 0 when
// unknown.
uint64_t ProcessStartTime(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::stringstream text;
  text << in.rdbuf();
  const std::string stat = text.str();
  const size_t name_end = stat.rfind(')');  // the command name may hold spaces
  if (name_end == std::string::npos) return 0;
  std::vector<std::string> fields =
      absl::StrSplit(stat.substr(name_end + 1), ' ', absl::SkipEmpty());
  // fields[0] is field 3 (state).
  if (fields.size() < 20) return 0;
  return strtoull(fields[19].c_str(), nullptr, 10);
}

// Whether the kernel gives shared memory (tmpfs, /dev/shm) huge pages when a
// mapping asks with MADV_HUGEPAGE: its setting is the bracketed word.
bool ShmemHugePagesAllowed() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string word;
  while (in >> word) {
    if (word.front() == '[') {
      return word == "[always]" || word == "[within_size]" || word == "[advise]" ||
             word == "[force]";
    }
  }
  return false;
}

// Maps `bytes` of `fd` shared, at an address aligned to `align` (so that 2 MiB
// of the file can be one huge page in every process that maps it).
absl::StatusOr<char*> MapShared(int fd, uint64_t bytes, uint64_t align) {
  const uint64_t reserve = bytes + align;
  void* base =
      mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return absl::ResourceExhaustedError(Errno(errno));
  const uintptr_t start = RoundUp(reinterpret_cast<uintptr_t>(base), align);
  void* mapped = mmap(reinterpret_cast<void*>(start), bytes, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_FIXED, fd, 0);
  if (mapped == MAP_FAILED) {
    const int err = errno;
    munmap(base, reserve);
    return absl::ResourceExhaustedError(Errno(err));
  }
  const uintptr_t end = start + RoundUp(bytes, static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  const uintptr_t reserve_start = reinterpret_cast<uintptr_t>(base);
  const uintptr_t reserve_end = reserve_start + reserve;
  if (start > reserve_start) munmap(base, start - reserve_start);
  if (reserve_end > end) munmap(reinterpret_cast<void*>(end), reserve_end - end);
  return static_cast<char*>(mapped);
}

// Which pid namespace this process is in (0 if unknown): a pid written by a
// process of another namespace (another container on the node sharing
// /dev/shm) says nothing about who is alive here.
uint64_t PidNamespace() {
  struct stat ns;
  return stat("/proc/self/ns/pid", &ns) == 0 ? static_cast<uint64_t>(ns.st_ino) : 0;
}

}  // namespace

bool shm_pool_internal::ProcessAlive(pid_t pid, uint64_t start_time) {
  if (pid <= 0) return false;
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  return start_time == 0 || ProcessStartTime(pid) == start_time;
}

std::string shm_pool_internal::FreeSpaceOf(const std::string& dir) {
  struct statvfs fs;
  if (statvfs(dir.c_str(), &fs) != 0) return "";
  return absl::StrCat(" (", dir, " has ", static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize,
                      " bytes free)");
}

ShmPool::ShmPool(std::string path, bool creator, int fd, char* mapping, uint64_t mapping_bytes,
                 BuddyAllocator allocator)
    : path_(std::move(path)),
      creator_(creator),
      fd_(fd),
      mapping_(mapping),
      mapping_bytes_(mapping_bytes),
      data_(mapping + reinterpret_cast<Header*>(mapping)->data_offset),
      allocator_(allocator) {
  const uint64_t words = (allocator_.capacity_bytes() / allocator_.unit_bytes() + 63) / 64;
  mapped_ = std::make_unique<std::atomic<uint64_t>[]>(words);  // value-initialized: zeros
}

ShmPool::~ShmPool() {
  // A forked child holds a copy of this object: only the creating process
  // itself removes the file, and only the file it made.
  struct stat now;
  if (creator_ && getpid() == header()->creator_pid && stat(path_.c_str(), &now) == 0 &&
      now.st_dev == device_ && now.st_ino == inode_) {
    unlink(path_.c_str());
  }
  munmap(mapping_, mapping_bytes_);
  close(fd_);
}

absl::StatusOr<std::unique_ptr<ShmPool>> ShmPool::Create(const ShmPoolOptions& options) {
  const uint64_t min_block = options.min_block;
  if (options.name.empty() || options.name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("a shared-memory pool's name must be a file name, not '", options.name, "'"));
  }
  const std::string path = absl::StrCat(options.dir, "/", options.name);
  if (min_block < 64 || (min_block & (min_block - 1)) != 0 || options.size_bytes < min_block ||
      options.size_bytes / min_block >= kNoUnit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-memory pool ", path, ": the block unit must be a power of two >= 64 bytes and the",
        " pool 1 to 2^32-2 units; got ", options.size_bytes, " bytes in units of ", min_block,
        " (set by dragon-agent's ", kShmPoolSizeOption, ")"));
  }
  if (options.prefault && !options.reserve) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shared-memory pool ", path, ": prefault touches every page, which reserves them all;",
        " it cannot be combined with reserve=false"));
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t num_units = options.size_bytes / min_block;
  const uint64_t metadata_offset = RoundUp(sizeof(Header), page);
  const uint64_t metadata_bytes = BuddyAllocator::MetadataBytes(num_units);
  uint64_t data_align = std::max(page, min_block);
  if (options.huge_pages) data_align = std::max(data_align, kHugePageBytes);
  const uint64_t backed_map_offset = RoundUp(metadata_offset + metadata_bytes, 8);
  const uint64_t backed_map_bytes = options.reserve ? 0 : RoundUp(num_units, 64) / 8;
  const uint64_t data_offset = RoundUp(backed_map_offset + backed_map_bytes, data_align);
  const uint64_t data_bytes = num_units * min_block;
  const uint64_t file_bytes = RoundUp(data_offset + data_bytes, page);

  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(err == EEXIST ? absl::StatusCode::kAlreadyExists
                                      : absl::StatusCode::kFailedPrecondition,
                        absl::StrCat("cannot create shared-memory pool ", path, ": ", Errno(err)));
  }
  char* mapping = nullptr;
  auto fail = [&](absl::StatusCode code, const std::string& why) {
    if (mapping != nullptr) munmap(mapping, file_bytes);
    close(fd);
    unlink(path.c_str());
    return absl::Status(code, absl::StrCat("cannot create shared-memory pool ", path, " of ",
                                           file_bytes, " bytes: ", why));
  };
  if (ftruncate(fd, static_cast<off_t>(file_bytes)) != 0) {
    return fail(absl::StatusCode::kResourceExhausted, Errno(errno));
  }
  // The header's pages first, so that the creator's pid is on record (for
  // RemoveStale) before the long reservation of the rest, which a kill may
  // interrupt.
  if (fallocate(fd, 0, 0, static_cast<off_t>(metadata_offset)) != 0 && errno != EOPNOTSUPP) {
    return fail(absl::StatusCode::kResourceExhausted, Errno(errno));
  }
  absl::StatusOr<char*> mapped =
      MapShared(fd, file_bytes, options.huge_pages ? kHugePageBytes : page);
  if (!mapped.ok()) return fail(absl::StatusCode::kResourceExhausted, mapped.status().ToString());
  mapping = *mapped;
  auto* header = reinterpret_cast<Header*>(mapping);
  header->version = kVersion;
  header->header_bytes = sizeof(Header);
  header->creator_pid = getpid();
  header->creator_start_time = ProcessStartTime(getpid());
  header->creator_pid_namespace = PidNamespace();
  header->magic.store(kCreatingMagic, std::memory_order_release);

  // tmpfs hands out pages when they are first touched; without this a pool
  // larger than what /dev/shm has left would SIGBUS some process later. A
  // lazily backed pool reserves its metadata now and each block in Allocate.
  const uint64_t reserved_bytes = options.reserve ? file_bytes : data_offset;
  if (fallocate(fd, 0, 0, static_cast<off_t>(reserved_bytes)) != 0 && errno != EOPNOTSUPP) {
    const int err = errno;
    return fail(absl::StatusCode::kResourceExhausted,
                absl::StrCat(Errno(err), FreeSpaceOf(options.dir), "; lower dragon-agent's ",
                             kShmPoolSizeOption, " or make ", options.dir, " larger"));
  }
  bool huge_pages = false;
  if (options.huge_pages) {
    huge_pages = madvise(mapping + data_offset, data_bytes, MADV_HUGEPAGE) == 0 &&
                 ShmemHugePagesAllowed();
  }
  if (options.prefault) {
#ifdef MADV_POPULATE_WRITE
    const bool populated = madvise(mapping, file_bytes, MADV_POPULATE_WRITE) == 0;
#else
    const bool populated = false;
#endif
    if (!populated) {  // kernels before 5.14; the pages exist, so this cannot SIGBUS
      for (uint64_t at = 0; at < file_bytes; at += page) {
        reinterpret_cast<volatile char*>(mapping)[at] = 0;
      }
    }
  }

  header->flags = (huge_pages ? kHugePagesFlag : 0) | (options.reserve ? 0 : kLazyFlag);
  header->file_bytes = file_bytes;
  header->metadata_offset = metadata_offset;
  header->metadata_bytes = metadata_bytes;
  header->data_offset = data_offset;
  header->data_bytes = data_bytes;
  header->backed_map_offset = backed_map_offset;  // its bits are zero: a new file's are
  header->backed_map_bytes = backed_map_bytes;
  header->repairs = 0;
  header->wake_sequence.store(0);
  pthread_mutexattr_t attributes;
  pthread_mutexattr_init(&attributes);
  pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
  const int init = pthread_mutex_init(&header->mutex, &attributes);
  pthread_mutexattr_destroy(&attributes);
  if (init != 0) return fail(absl::StatusCode::kInternal, Errno(init));
  absl::StatusOr<BuddyAllocator> allocator = BuddyAllocator::Format(
      mapping + metadata_offset, metadata_bytes, data_bytes, min_block);
  if (!allocator.ok()) return fail(allocator.status().code(), allocator.status().ToString());
  header->magic.store(kMagic, std::memory_order_release);

  struct stat made;
  fstat(fd, &made);
  std::unique_ptr<ShmPool> pool(new ShmPool(path, true, fd, mapping, file_bytes, *allocator));
  pool->huge_pages_ = huge_pages;
  pool->reserved_ = options.reserve;
  if (!options.reserve) {
    pool->backed_ = reinterpret_cast<std::atomic<uint64_t>*>(mapping + backed_map_offset);
  }
  pool->device_ = made.st_dev;
  pool->inode_ = made.st_ino;
  return pool;
}

absl::StatusOr<std::unique_ptr<ShmPool>> ShmPool::Attach(const std::string& path) {
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(err == ENOENT ? absl::StatusCode::kNotFound
                                      : absl::StatusCode::kFailedPrecondition,
                        absl::StrCat("cannot attach shared-memory pool ", path, ": ", Errno(err)));
  }
  auto refuse = [&](absl::StatusCode code, const std::string& why, char* mapping = nullptr,
                    uint64_t bytes = 0) {
    if (mapping != nullptr) munmap(mapping, bytes);
    close(fd);
    return absl::Status(code, absl::StrCat("cannot attach shared-memory pool ", path, ": ", why));
  };
  struct stat file;
  if (fstat(fd, &file) != 0) return refuse(absl::StatusCode::kInternal, Errno(errno));
  const uint64_t file_bytes = static_cast<uint64_t>(file.st_size);
  if (!S_ISREG(file.st_mode) || file_bytes < sizeof(Header)) {
    return refuse(absl::StatusCode::kFailedPrecondition,
                  absl::StrCat("not a Dragon shared-memory pool (", file_bytes,
                               " bytes, too short for a pool header)"));
  }
  absl::StatusOr<char*> mapped = MapShared(fd, file_bytes, kHugePageBytes);
  if (!mapped.ok()) return refuse(absl::StatusCode::kResourceExhausted, mapped.status().ToString());
  char* mapping = *mapped;
  auto* header = reinterpret_cast<Header*>(mapping);
  const uint64_t magic = header->magic.load(std::memory_order_acquire);
  if (magic == kCreatingMagic) {
    return refuse(absl::StatusCode::kUnavailable,
                  absl::StrCat("still being created by pid ", header->creator_pid), mapping,
                  file_bytes);
  }
  if (magic != kMagic) {
    return refuse(absl::StatusCode::kFailedPrecondition,
                  "not a Dragon shared-memory pool (wrong magic number)", mapping, file_bytes);
  }
  if (header->version != kVersion || header->header_bytes != sizeof(Header)) {
    return refuse(absl::StatusCode::kFailedPrecondition,
                  absl::StrCat("pool layout version ", header->version, " (header of ",
                               header->header_bytes, " bytes); this program reads version ",
                               kVersion, " (header of ", sizeof(Header), " bytes)"),
                  mapping, file_bytes);
  }
  // Bounds from a file are checked before they are used as offsets.
  const bool fits = header->file_bytes == file_bytes && header->metadata_offset >= sizeof(Header) &&
                    header->metadata_offset % 8 == 0 && header->data_offset <= file_bytes &&
                    header->metadata_bytes <= header->data_offset &&
                    header->metadata_offset <= header->data_offset - header->metadata_bytes &&
                    header->data_bytes <= file_bytes - header->data_offset;
  if (!fits) {
    return refuse(absl::StatusCode::kDataLoss, "its header does not match its size", mapping,
                  file_bytes);
  }
  absl::StatusOr<BuddyAllocator> allocator =
      BuddyAllocator::Open(mapping + header->metadata_offset, header->metadata_bytes);
  if (!allocator.ok() || allocator->capacity_bytes() > header->data_bytes) {
    return refuse(absl::StatusCode::kDataLoss,
                  allocator.ok() ? "its allocator is larger than its data"
                                 : std::string(allocator.status().message()),
                  mapping, file_bytes);
  }
  const uint64_t num_units = allocator->capacity_bytes() / allocator->unit_bytes();
  const bool lazy = (header->flags & kLazyFlag) != 0;
  if (lazy && !(header->backed_map_offset % 8 == 0 &&
                header->backed_map_offset >= header->metadata_offset + header->metadata_bytes &&
                header->backed_map_offset <= header->data_offset &&
                header->backed_map_bytes <= header->data_offset - header->backed_map_offset &&
                header->backed_map_bytes / 8 >= (num_units + 63) / 64)) {
    return refuse(absl::StatusCode::kDataLoss, "its map of reserved blocks does not fit",
                  mapping, file_bytes);
  }
  std::unique_ptr<ShmPool> pool(new ShmPool(path, false, fd, mapping, file_bytes, *allocator));
  pool->reserved_ = !lazy;
  if (lazy) {
    pool->backed_ = reinterpret_cast<std::atomic<uint64_t>*>(mapping + header->backed_map_offset);
  }
  if (header->flags & kHugePagesFlag) {
    pool->huge_pages_ =
        madvise(mapping + header->data_offset, header->data_bytes, MADV_HUGEPAGE) == 0;
  }
  return pool;
}

absl::StatusOr<std::unique_ptr<ShmPool>> ShmPool::Adopt(const std::string& path) {
  absl::StatusOr<std::unique_ptr<ShmPool>> pool = Attach(path);
  if (!pool.ok()) return pool.status();
  struct stat file;
  if (fstat((*pool)->fd_, &file) != 0) {
    return absl::InternalError(absl::StrCat("cannot adopt shared-memory pool ", path, ": ",
                                            Errno(errno)));
  }
  // Under the pool's mutex, so that two processes adopting at once cannot
  // both see the creator dead: the second sees the first alive.
  if (absl::Status locked = (*pool)->Lock(); !locked.ok()) return locked;
  Header* header = (*pool)->header();
  if (ProcessAlive(header->creator_pid, header->creator_start_time)) {
    const pid_t creator = header->creator_pid;
    (*pool)->Unlock();
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot adopt shared-memory pool ", path, ": its creator, pid ", creator, ", is alive"));
  }
  header->creator_pid = getpid();
  header->creator_start_time = ProcessStartTime(getpid());
  header->creator_pid_namespace = PidNamespace();
  // The new creator has not started its services yet (MarkCreatorReady).
  __atomic_fetch_and(&header->flags, ~kCreatorReadyFlag, __ATOMIC_RELEASE);
  (*pool)->Unlock();
  (*pool)->creator_ = true;
  (*pool)->device_ = file.st_dev;
  (*pool)->inode_ = file.st_ino;
  return pool;
}

bool ShmPool::RemoveIfStale(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  struct stat file;
  alignas(Header) char bytes[sizeof(Header)];
  const bool readable = fstat(fd, &file) == 0 && S_ISREG(file.st_mode) &&
                        file.st_uid == geteuid() &&
                        pread(fd, bytes, sizeof(bytes), 0) == static_cast<ssize_t>(sizeof(bytes));
  close(fd);
  if (!readable) return false;
  uint64_t magic, start_time, pid_namespace;
  uint32_t version;
  int32_t pid;
  memcpy(&magic, bytes + offsetof(Header, magic), sizeof(magic));
  memcpy(&version, bytes + offsetof(Header, version), sizeof(version));
  memcpy(&pid, bytes + offsetof(Header, creator_pid), sizeof(pid));
  memcpy(&start_time, bytes + offsetof(Header, creator_start_time), sizeof(start_time));
  memcpy(&pid_namespace, bytes + offsetof(Header, creator_pid_namespace), sizeof(pid_namespace));
  // A file without the creator's pid yet is left alone: it may be a pool
  // that a live process is creating right now.
  // Versions 1 and 2 differ only in a flag: the fields read here are the same.
  if ((magic != kMagic && magic != kCreatingMagic) || version < 1 || version > kVersion) {
    return false;
  }
  const uint64_t our_pid_namespace = PidNamespace();
  if (pid_namespace != 0 && our_pid_namespace != 0 && pid_namespace != our_pid_namespace) {
    return false;
  }
  return !ProcessAlive(pid, start_time) && unlink(path.c_str()) == 0;
}

int ShmPool::RemoveStale(const std::string& dir, const std::string& prefix) {
  DIR* listing = opendir(dir.c_str());
  if (listing == nullptr) return 0;
  int removed = 0;
  while (dirent* entry = readdir(listing)) {
    const std::string name = entry->d_name;
    if (name.compare(0, prefix.size(), prefix) != 0 || name == "." || name == "..") continue;
    if (RemoveIfStale(absl::StrCat(dir, "/", name))) ++removed;
  }
  closedir(listing);
  return removed;
}

}  // namespace dragon::common
