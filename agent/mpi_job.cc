#include "agent/mpi_job.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace dragon::agent {

std::vector<std::string> MpiJob::ErrFiles() const {
  std::vector<std::string> names;
  if (kind == MpiLauncherKind::kCommand) return {"launcher.err"};
  for (uint32_t r = 0; r < placement.ranks(); ++r) names.push_back(absl::StrCat("rank-", r, ".err"));
  return names;
}

std::string RankFile(const std::string& dir, uint32_t rank, const char* ext) {
  return absl::StrCat(dir, "/rank-", rank, ".", ext);
}

std::string ReadTail(const std::string& path, uint64_t max, uint64_t* size) {
  *size = 0;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  struct stat st {};
  fstat(fd, &st);
  *size = static_cast<uint64_t>(st.st_size);
  const uint64_t from = *size > max ? *size - max : 0;
  std::string out(*size - from, '\0');
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t n = pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(from + got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  close(fd);
  return out;
}

}  // namespace dragon::agent
