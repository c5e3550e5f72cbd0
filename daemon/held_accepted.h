// Task ids a session's client has not been told yet. A client that said
// Hello.accepted_with_results gets a Python task's id with the next message
// the head sends it, or not at all when the result (which carries the id)
// comes first: under a flood of short tasks, one write per task instead of
// an Accepted and then a result. Not thread-safe: the Head holds its lock.
#ifndef DRAGON_DAEMON_HELD_ACCEPTED_H_
#define DRAGON_DAEMON_HELD_ACCEPTED_H_

#include <cstddef>
#include <cstdint>

#include "proto/head.pb.h"

namespace dragon::daemon {

class HeldAccepted {
 public:
  void Hold(uint64_t client_ref, uint64_t task_id);

  // Into a batch about to be sent: drops the held ids the batch's results
  // answer, moves every other held id into batch->accepted (after any it
  // already has).
  void AttachTo(dragon::v1::ResultBatch* batch);

  // Moves every held id into `accepted` (after any it already has).
  void MoveTo(dragon::v1::Accepted* accepted);

  size_t size() const { return static_cast<size_t>(held_.task_ids_size()); }
  bool empty() const { return held_.task_ids_size() == 0; }

 private:
  dragon::v1::Accepted held_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_HELD_ACCEPTED_H_
