#include "agent/grant_files.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dragon::agent {

std::string GrantDir(const std::string& run_id, const std::string& root) {
  return absl::StrCat(root, "/dragon-grants-", getuid(), "/", run_id);
}

std::string GrantFile(const std::string& run_id, const std::string& node_id, uint64_t task_id,
                      const std::string& root) {
  return absl::StrCat(GrantDir(run_id, root), "/", task_id, ".", node_id);
}

absl::Status WriteGrantFile(const std::string& run_id, const std::string& node_id,
                            uint64_t task_id, const std::vector<int>& cpus,
                            const std::string& root) {
  const std::string top = absl::StrCat(root, "/dragon-grants-", getuid());
  const std::string dir = GrantDir(run_id, root);
  for (const std::string& d : {top, dir}) {
    if (mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) {
      return absl::InternalError(absl::StrCat("cannot create ", d, ": ", strerror(errno)));
    }
  }
  const std::string path = GrantFile(run_id, node_id, task_id, root);
  const std::string tmp = absl::StrCat(path, ".tmp");
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", strerror(errno)));
  const std::string line = absl::StrCat(absl::StrJoin(cpus, ","), "\n");
  const bool ok = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

void RemoveGrantFile(const std::string& run_id, const std::string& node_id, uint64_t task_id,
                     const std::string& root) {
  unlink(GrantFile(run_id, node_id, task_id, root).c_str());
}

void RemoveGrantDir(const std::string& run_id, const std::string& root) {
  rmdir(GrantDir(run_id, root).c_str());
  rmdir(absl::StrCat(root, "/dragon-grants-", getuid()).c_str());  // fails while others use it
}

}  // namespace dragon::agent
