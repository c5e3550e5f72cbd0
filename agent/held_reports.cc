#include "agent/held_reports.h"

#include <signal.h>

#include <algorithm>
#include <utility>

namespace dragon::agent {

bool IsStopSignal(int signal) { return signal == SIGTERM || signal == SIGINT || signal == SIGHUP; }

void HeldReports::Hold(v1::TaskResult result, int64_t release_at_us) {
  // Kept sorted even if a caller's holds were not equally long.
  auto at = std::upper_bound(held_.begin(), held_.end(), release_at_us,
                             [](int64_t t, const Held& h) { return t < h.release_at_us; });
  held_.insert(at, Held{release_at_us, std::move(result)});
}

std::vector<v1::TaskResult> HeldReports::TakeDue(int64_t now_us) {
  std::vector<v1::TaskResult> due;
  auto end = held_.begin();
  while (end != held_.end() && end->release_at_us <= now_us) {
    due.push_back(std::move(end->result));
    ++end;
  }
  held_.erase(held_.begin(), end);
  return due;
}

std::optional<int64_t> HeldReports::NextReleaseUs() const {
  if (held_.empty()) return std::nullopt;
  return held_.front().release_at_us;
}

std::vector<uint64_t> HeldReports::DropAll() {
  std::vector<uint64_t> ids;
  ids.reserve(held_.size());
  for (const Held& h : held_) ids.push_back(h.result.task_id());
  held_.clear();
  return ids;
}

}  // namespace dragon::agent
