#include "agent/update_builder.h"

#include <iterator>
#include <unordered_set>
#include <utility>

namespace dragon::agent {

bool TakeUpdate(std::vector<v1::TaskStarted>* started, std::vector<v1::TaskResult>* results,
                size_t max_bytes, v1::AgentUpdate* update) {
  if (started->empty() && results->empty()) return false;
  // Results first, so that we know which starts they make redundant.
  size_t bytes = 0;
  size_t taken = 0;
  while (taken < results->size()) {
    const size_t size = (*results)[taken].ByteSizeLong() + 16;
    if (taken > 0 && bytes + size > max_bytes) break;
    bytes += size;
    ++taken;
  }
  std::unordered_set<uint64_t> ending;
  if (!started->empty() && taken > 0) {
    ending.reserve(taken);
    for (size_t i = 0; i < taken; ++i) ending.insert((*results)[i].task_id());
  }
  for (auto& s : *started) {
    if (ending.count(s.task_id()) == 0) *update->add_started() = std::move(s);
  }
  started->clear();
  update->mutable_results()->Reserve(static_cast<int>(taken));
  for (size_t i = 0; i < taken; ++i) *update->add_results() = std::move((*results)[i]);
  results->erase(results->begin(), results->begin() + static_cast<std::ptrdiff_t>(taken));
  return true;
}

}  // namespace dragon::agent
