#include "agent/process_tree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <unordered_map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dragon::agent {
namespace {

bool ReadSmallFile(const std::string& path, std::string* out) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  out->clear();
  while (true) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out->append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return !out->empty();
}

std::vector<int> NumericEntries(const std::string& dir) {
  std::vector<int> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    int n = 0;
    if (absl::SimpleAtoi(e->d_name, &n) && n > 0) out.push_back(n);
  }
  closedir(d);
  return out;
}

}  // namespace

bool ParseStat(const std::string& stat, ProcInfo* out) {
  // "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
  //  cmajflt utime stime cutime cstime priority nice threads itrealvalue
  //  starttime vsize rss ..."; comm may hold ") ", so split after the last ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return false;
  if (!absl::SimpleAtoi(stat.substr(0, stat.find(' ')), &out->pid)) return false;
  std::vector<std::string> f = absl::StrSplit(stat.substr(close + 1), ' ', absl::SkipEmpty());
  // f[0] = state, f[1] = ppid, f[2] = pgrp, ..., f[21] = rss.
  if (f.size() < 22) return false;
  return absl::SimpleAtoi(f[1], &out->ppid) && absl::SimpleAtoi(f[2], &out->pgid) &&
         absl::SimpleAtoi(f[21], &out->rss_pages);
}

std::vector<ProcInfo> ListProcesses(const std::string& proc_dir) {
  std::vector<ProcInfo> out;
  std::string text;
  for (int pid : NumericEntries(proc_dir)) {
    ProcInfo p;
    if (ReadSmallFile(absl::StrCat(proc_dir, "/", pid, "/stat"), &text) && ParseStat(text, &p)) {
      out.push_back(p);
    }
  }
  return out;
}

std::vector<int> TreeOf(int root, const std::vector<ProcInfo>& procs) {
  std::unordered_map<int, std::vector<int>> children;
  bool root_leads_group = false;
  for (const ProcInfo& p : procs) {
    children[p.ppid].push_back(p.pid);
    if (p.pid == root && p.pgid == root) root_leads_group = true;
  }
  std::vector<int> out{root};
  for (size_t i = 0; i < out.size(); ++i) {
    auto it = children.find(out[i]);
    if (it == children.end()) continue;
    for (int c : it->second) out.push_back(c);
  }
  if (root_leads_group) {
    for (const ProcInfo& p : procs) {
      if (p.pgid == root && std::find(out.begin(), out.end(), p.pid) == out.end()) {
        out.push_back(p.pid);
      }
    }
  }
  return out;
}

uint64_t TreeRssBytes(int root, const std::string& proc_dir) {
  const std::vector<ProcInfo> procs = ListProcesses(proc_dir);
  std::unordered_map<int, uint64_t> rss;
  for (const ProcInfo& p : procs) rss[p.pid] = p.rss_pages;
  uint64_t pages = 0;
  for (int pid : TreeOf(root, procs)) pages += rss[pid];
  return pages * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

int KillTree(int root, const std::string& proc_dir) {
  if (root <= 0) return 0;
  const std::vector<int> tree = TreeOf(root, ListProcesses(proc_dir));
  int n = 0;
  // The group first: its members stop forking at once.
  if (killpg(root, SIGKILL) == 0) ++n;
  for (int pid : tree) {
    if (kill(pid, SIGKILL) == 0) ++n;
  }
  return n;
}

absl::Status SetProcessAffinity(int pid, const std::vector<int>& cpus,
                                const std::string& proc_dir) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) {
    if (c >= 0 && c < CPU_SETSIZE) CPU_SET(c, &set);
  }
  if (CPU_COUNT(&set) == 0) return absl::InvalidArgumentError("no CPU to pin to");
  std::vector<int> tids = NumericEntries(absl::StrCat(proc_dir, "/", pid, "/task"));
  if (tids.empty()) tids.push_back(pid);
  int failed = 0, last_errno = 0;
  for (int tid : tids) {
    if (sched_setaffinity(tid, sizeof(set), &set) != 0 && errno != ESRCH) {
      ++failed;
      last_errno = errno;
    }
  }
  if (failed > 0) {
    return absl::InternalError(absl::StrCat("sched_setaffinity of ", failed, " thread(s) of pid ",
                                            pid, ": ", strerror(last_errno)));
  }
  return absl::OkStatus();
}

std::vector<int> AffinityCpus() {
  cpu_set_t set;
  std::vector<int> out;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return out;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) out.push_back(c);
  }
  return out;
}

}  // namespace dragon::agent
