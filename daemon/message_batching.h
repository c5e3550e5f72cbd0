// Merges what a stream's writer drained from its outbox into as few wire
// messages as possible: consecutive result (or task) batches become one
// message until it reaches a size cap, so that a flood of small tasks costs
// a handful of writes per drain instead of one per task.
#ifndef DRAGON_DAEMON_MESSAGE_BATCHING_H_
#define DRAGON_DAEMON_MESSAGE_BATCHING_H_

#include <cstddef>
#include <vector>

#include "proto/agent.pb.h"
#include "proto/head.pb.h"

namespace dragon::daemon {

// Messages above this size are not grown further (one task's payload can
// still make a single message larger than this).
inline constexpr size_t kBatchSoftLimitBytes = 8u << 20;

std::vector<dragon::v1::HeadMessage> MergeForClient(std::vector<dragon::v1::HeadMessage>* in,
                                                    size_t soft_limit = kBatchSoftLimitBytes);

std::vector<dragon::v1::HeadToAgent> MergeForAgent(std::vector<dragon::v1::HeadToAgent>* in,
                                                   size_t soft_limit = kBatchSoftLimitBytes);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_MESSAGE_BATCHING_H_
