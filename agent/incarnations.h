// An agent's life as a series of incarnations. Each registration with the
// head is one; when the head is lost (stream broken, or no ping within the
// heartbeat timeout) everything the incarnation ran is killed (its pool is
// shut down), so nothing stale can be delivered, and the agent registers
// again as the node's next incarnation, for up to the rejoin timeout. A head
// that says this agent is stale (a newer one serves the node) ends it.
#ifndef DRAGON_AGENT_INCARNATIONS_H_
#define DRAGON_AGENT_INCARNATIONS_H_

#include <functional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "agent/head_connection.h"

namespace dragon::agent {

// Runs one incarnation on `conn` once it is registered: starts a pool sized
// by what the head said, serves until Run returns, shuts the pool down
// (killing and reaping every worker) and returns Run's status.
using ServeIncarnation = std::function<absl::Status(const v1::Registered& registered)>;

// OK when the head let the agent go (AgentShutdown, stream closed by the
// head) or Stop() was called; otherwise why the agent could not go on.
absl::Status RunIncarnations(HeadConnection* conn, absl::Duration rejoin_timeout,
                             const ServeIncarnation& serve);

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_INCARNATIONS_H_
