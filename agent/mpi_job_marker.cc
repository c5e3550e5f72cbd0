#include "agent/mpi_job_marker.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace dragon::agent {

std::string MpiTaskMarker(const std::string& run_id, uint64_t task_id) {
  return absl::StrCat(run_id.empty() ? "run" : run_id, "/", task_id);
}

std::vector<int> KillMarkedProcesses(const std::string& marker, const std::string& proc_dir) {
  std::vector<int> killed;
  const std::string want = absl::StrCat(kMpiTaskMarkerEnv, "=", marker);
  DIR* d = opendir(proc_dir.c_str());
  if (d == nullptr) return killed;
  const pid_t self = getpid();
  std::string buf;
  while (dirent* e = readdir(d)) {
    int pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid <= 1 || pid == self) continue;
    const std::string path = absl::StrCat(proc_dir, "/", e->d_name, "/environ");
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // gone, or not ours to read
    buf.clear();
    char chunk[16384];
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) > 0) buf.append(chunk, static_cast<size_t>(n));
    close(fd);
    size_t start = 0;
    bool found = false;
    while (start < buf.size()) {
      size_t end = buf.find('\0', start);
      if (end == std::string::npos) end = buf.size();
      if (end - start == want.size() && buf.compare(start, want.size(), want) == 0) {
        found = true;
        break;
      }
      start = end + 1;
    }
    if (found && kill(pid, SIGKILL) == 0) killed.push_back(pid);
  }
  closedir(d);
  return killed;
}

}  // namespace dragon::agent
