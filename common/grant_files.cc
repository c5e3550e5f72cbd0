#include "common/grant_files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dragon::common {
namespace {

constexpr char kOwnerPrefix[] = "owner.";

std::string TopDir(const std::string& root) { return absl::StrCat(root, "/dragon-grants-", getuid()); }

std::string OwnerFile(const std::string& run_id, const std::string& node_id,
                      const std::string& root) {
  return absl::StrCat(GrantDir(run_id, root), "/", kOwnerPrefix, node_id);
}

// Field 22 of /proc/PID/stat (start time in clock ticks since boot); "" when
// the process does not exist. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from the last ')'.
std::string ProcessStartTime(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat;
  if (!std::getline(in, stat)) return "";
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return "";
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; ++i) {
    if (i == 22) return field;
  }
  return "";
}

// The owner file's line: "<pid> <start time>".
std::string OwnerLine(pid_t pid) { return absl::StrCat(pid, " ", ProcessStartTime(pid), "\n"); }

// Whether the owner named by `path` still runs (the same process, not a reuse of its pid).
bool OwnerAlive(const std::string& path) {
  std::ifstream in(path);
  std::string pid_text, start;
  if (!(in >> pid_text >> start)) return false;  // unreadable or half-written: not a live owner
  int pid = 0;
  if (!absl::SimpleAtoi(pid_text, &pid) || pid <= 0) return false;
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  return ProcessStartTime(pid) == start;
}

absl::Status WriteWhole(const std::string& path, const std::string& text) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", strerror(errno)));
  const bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(d);
  return names;
}

}  // namespace

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
  const std::string dir = GrantDir(run_id, root);
  for (const std::string& d : {TopDir(root), dir}) {
    if (mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) {
      return absl::InternalError(absl::StrCat("cannot create ", d, ": ", strerror(errno)));
    }
  }
  // The owner first: a grant file is never there without the agent that will remove it named.
  const std::string owner = OwnerFile(run_id, node_id, root);
  const std::string mine = OwnerLine(getpid());
  std::string current;
  {
    std::ifstream in(owner);
    std::getline(in, current);
  }
  if (absl::StrCat(current, "\n") != mine) {
    if (absl::Status s = WriteWhole(owner, mine); !s.ok()) return s;
  }
  return WriteWhole(GrantFile(run_id, node_id, task_id, root),
                    absl::StrCat(absl::StrJoin(cpus, ","), "\n"));
}

void RemoveGrantFile(const std::string& run_id, const std::string& node_id, uint64_t task_id,
                     const std::string& root) {
  unlink(GrantFile(run_id, node_id, task_id, root).c_str());
}

void RemoveGrantDir(const std::string& run_id, const std::string& node_id,
                    const std::string& root) {
  unlink(OwnerFile(run_id, node_id, root).c_str());
  rmdir(GrantDir(run_id, root).c_str());  // fails while other nodes' files are there
  rmdir(TopDir(root).c_str());            // fails while other runs use it
}

int SweepStaleGrants(const std::string& root) {
  int removed = 0;
  const std::string top = TopDir(root);
  for (const std::string& run : Entries(top)) {
    const std::string dir = absl::StrCat(top, "/", run);
    std::vector<std::string> names = Entries(dir);
    std::vector<std::string> live_nodes;
    for (const std::string& name : names) {
      if (absl::StartsWith(name, kOwnerPrefix) && !absl::EndsWith(name, ".tmp") &&
          OwnerAlive(absl::StrCat(dir, "/", name))) {
        live_nodes.push_back(name.substr(sizeof(kOwnerPrefix) - 1));
      }
    }
    for (const std::string& name : names) {
      // "<task>.<node>", "owner.<node>" (node ids may hold dots), or either with ".tmp".
      std::string base = name;
      if (absl::EndsWith(base, ".tmp")) base.resize(base.size() - 4);
      const size_t dot = base.find('.');
      const std::string node = dot == std::string::npos ? "" : base.substr(dot + 1);
      bool live = false;
      for (const std::string& n : live_nodes) live = live || n == node;
      if (!live && unlink(absl::StrCat(dir, "/", name).c_str()) == 0) ++removed;
    }
    rmdir(dir.c_str());  // fails while a live agent's files are there
  }
  rmdir(top.c_str());
  return removed;
}

}  // namespace dragon::common
