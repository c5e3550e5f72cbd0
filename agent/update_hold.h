// When the head connection's loop writes what the pool reported: at once,
// or a little later so that one message carries more. Pure (times are
// passed in), so it is unit-tested alone; HeadConnection evaluates it under
// its lock each time something is queued.
#ifndef DRAGON_AGENT_UPDATE_HOLD_H_
#define DRAGON_AGENT_UPDATE_HOLD_H_

#include <cstddef>

#include "absl/time/time.h"

namespace dragon::agent {

struct UpdateHoldOptions {
  // While the pool has tasks queued (no slot idles for want of work), an
  // update with results waits until this long after the previous update, so
  // that a flood of short tasks costs one message per many results. With
  // nothing queued, results leave at once: a lone task's latency is
  // unchanged.
  absl::Duration coalesce = absl::Microseconds(1000);
  // ...but never holds more results than this.
  size_t coalesce_max_results = 1024;
  // Starts with nothing else to send wait this long after the first of them
  // for their tasks' results: a short task's start and result then leave as
  // one message (the result makes the start redundant, TakeUpdate drops it),
  // one write here and one read in the head instead of two of each. It
  // delays the head's RUNNING by as much for a longer task, and widens by
  // as much the window in which an agent lost right after a start makes the
  // head re-queue that task as never started. Zero: starts leave at once.
  absl::Duration start_linger = absl::Microseconds(300);
};

// What is queued for the head connection's loop when it decides.
struct PendingUpdate {
  // Something that must go now: a heartbeat, task I/O, a logs answer, or
  // the stream is ending.
  bool urgent = false;
  size_t started = 0;
  size_t results = 0;
  size_t released = 0;
  // Tasks the pool holds that no slot runs yet.
  size_t queued_tasks = 0;
  absl::Time last_update = absl::InfinitePast();  // when the previous update left
  absl::Time first_started = absl::InfinitePast();  // when the oldest queued start came
};

// When to send what is queued: a time not after `now` means now
// (InfinitePast when there is nothing to hold), else the time to wait until
// (sooner if something is queued meanwhile: evaluate again).
absl::Time SendAt(const PendingUpdate& pending, const UpdateHoldOptions& options);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_UPDATE_HOLD_H_
