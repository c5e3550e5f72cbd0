#include "daemon/held_accepted.h"

#include "absl/container/flat_hash_set.h"

namespace dragon::daemon {

void HeldAccepted::Hold(uint64_t client_ref, uint64_t task_id) {
  held_.add_client_refs(client_ref);
  held_.add_task_ids(task_id);
}

void HeldAccepted::MoveTo(dragon::v1::Accepted* accepted) {
  if (empty()) return;
  if (accepted->task_ids_size() == 0) {
    accepted->Swap(&held_);
  } else {
    accepted->mutable_client_refs()->MergeFrom(held_.client_refs());
    accepted->mutable_task_ids()->MergeFrom(held_.task_ids());
  }
  held_.Clear();
}

void HeldAccepted::AttachTo(dragon::v1::ResultBatch* batch) {
  if (empty()) return;
  // Most batches answer one or two tasks: a linear scan beats a hash set there.
  const int results = batch->results_size();
  auto answered = [&, set = absl::flat_hash_set<uint64_t>()](uint64_t id) mutable {
    if (results <= 8) {
      for (const auto& r : batch->results()) {
        if (r.task_id() == id) return true;
      }
      return false;
    }
    if (set.empty()) {
      for (const auto& r : batch->results()) set.insert(r.task_id());
    }
    return set.contains(id);
  };
  dragon::v1::Accepted* out = nullptr;  // made only if an id is left to send
  for (int i = 0; i < held_.task_ids_size(); ++i) {
    const uint64_t id = held_.task_ids(i);
    if (answered(id)) continue;
    if (out == nullptr) out = batch->mutable_accepted();
    out->add_client_refs(held_.client_refs(i));
    out->add_task_ids(id);
  }
  held_.Clear();
}

}  // namespace dragon::daemon
