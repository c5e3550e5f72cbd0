#include "agent/placed_cores.h"

#include <algorithm>
#include <utility>

namespace dragon::agent {

PlacedCores::PlacedCores(int cores) : cpu_taken_(std::max(cores, 1), false) {}

const std::vector<uint32_t>& PlacedCores::Cpus(uint64_t task_id) const {
  static const std::vector<uint32_t> kNone;
  auto it = placed_.find(task_id);
  return it != placed_.end() ? it->second.cpus : kNone;
}

void PlacedCores::Arrive(const v1::TaskAssignment& task) {
  Entry& p = placed_[task.task_id()];
  p.cpus.assign(task.grant().cpus().begin(), task.grant().cpus().end());
  p.running = false;
  p.mpi = task.grant().has_mpi();
  held_all_ += static_cast<int>(p.cpus.size());
  ++queued_;
}

void PlacedCores::Take(const Entry& entry) {
  held_running_ += static_cast<int>(entry.cpus.size());
  for (uint32_t c : entry.cpus) {
    if (c >= cpu_taken_.size()) cpu_taken_.resize(c + 1, false);
    cpu_taken_[c] = true;
  }
}

const PlacedCores::Entry* PlacedCores::Start(uint64_t task_id) {
  auto it = placed_.find(task_id);
  if (it == placed_.end() || it->second.running) return nullptr;
  it->second.running = true;
  --queued_;
  Take(it->second);
  return &it->second;
}

const PlacedCores::Entry* PlacedCores::Hold(const v1::TaskAssignment& task) {
  const uint64_t id = task.task_id();
  if (placed_.count(id) != 0) return nullptr;
  Entry& p = placed_[id];
  p.cpus.assign(task.grant().cpus().begin(), task.grant().cpus().end());
  p.running = true;
  p.mpi = task.grant().has_mpi();
  held_all_ += static_cast<int>(p.cpus.size());
  Take(p);
  holds_.insert(id);
  return &p;
}

std::optional<PlacedCores::Entry> PlacedCores::End(uint64_t task_id) {
  auto it = placed_.find(task_id);
  if (it == placed_.end()) return std::nullopt;
  Entry entry = std::move(it->second);
  placed_.erase(it);
  holds_.erase(task_id);
  const int cores = static_cast<int>(entry.cpus.size());
  held_all_ -= cores;
  if (entry.running) {
    held_running_ -= cores;
    for (uint32_t c : entry.cpus) cpu_taken_[c] = false;
  } else {
    --queued_;
  }
  return entry;
}

const std::vector<uint32_t>& PlacedCores::RecomputePlainCpus() {
  ++plain_version_;
  plain_cpus_.clear();
  bool any = false;
  for (size_t c = 0; c < cpu_taken_.size(); ++c) {
    if (cpu_taken_[c]) {
      any = true;
    } else {
      plain_cpus_.push_back(static_cast<uint32_t>(c));
    }
  }
  // Nothing placed runs (or it all is): plain tasks may use every CPU.
  if (!any || plain_cpus_.empty()) plain_cpus_.clear();
  return plain_cpus_;
}

}  // namespace dragon::agent
