// Builds the AgentUpdate messages the head connection writes from the events
// the pool reported since the last write. Pure, so it is unit-tested alone.
#ifndef DRAGON_AGENT_UPDATE_BUILDER_H_
#define DRAGON_AGENT_UPDATE_BUILDER_H_

#include <cstddef>
#include <vector>

#include "proto/agent.pb.h"

namespace dragon::agent {

// Moves queued events into `*update` (which should be empty): every start,
// and results in order up to `max_bytes` (always at least one). Returns
// false when nothing was queued.
//
// A start whose task's result goes out in the same update is dropped: the
// result carries the same start time and worker pid, and the head moves a
// task that ends while SCHEDULED through RUNNING by itself. For short tasks,
// where both almost always meet in one update, this halves the per-task
// items that both sides encode, decode and apply.
bool TakeUpdate(std::vector<v1::TaskStarted>* started, std::vector<v1::TaskResult>* results,
                size_t max_bytes, v1::AgentUpdate* update);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_UPDATE_BUILDER_H_
