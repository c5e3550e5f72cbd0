#include "agent/mpi_job.h"

#include "absl/strings/str_cat.h"
#include "agent/file_range.h"

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
  *size = FileSize(path);
  return ReadFileRange(path, *size > max ? *size - max : 0, *size);
}

}  // namespace dragon::agent
