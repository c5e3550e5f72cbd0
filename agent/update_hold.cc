#include "agent/update_hold.h"

namespace dragon::agent {

absl::Time SendAt(const PendingUpdate& pending, const UpdateHoldOptions& options) {
  if (pending.urgent) return absl::InfinitePast();
  if (pending.results > 0) {
    // Holding results is free only while every slot that frees up has a task
    // waiting for it.
    if (pending.queued_tasks == 0 || pending.results >= options.coalesce_max_results ||
        options.coalesce <= absl::ZeroDuration()) {
      return absl::InfinitePast();
    }
    return pending.last_update + options.coalesce;
  }
  if (pending.released > 0) return absl::InfinitePast();
  if (pending.started > 0 && options.start_linger > absl::ZeroDuration()) {
    return pending.first_started + options.start_linger;
  }
  return absl::InfinitePast();
}

}  // namespace dragon::agent
