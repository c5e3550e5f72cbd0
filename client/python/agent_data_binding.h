// dragon_parsl._core.agent_pull / agent_push / agent_dict / agent_channel: a
// process on a node asks its agent's AgentData service (agent/data_service.h,
// on the Unix socket the agent publishes as NodeInfo.data_socket and gives
// its workers as $DRAGON_AGENT_DATA_SOCKET) to move a block of a
// shared-memory pool between nodes, or to do a Dictionary or channel
// operation. Each thread keeps one connection per socket
// (common/data_socket_client.h); the interpreter lock is released while it
// waits.
#ifndef DRAGON_CLIENT_PYTHON_AGENT_DATA_BINDING_H_
#define DRAGON_CLIENT_PYTHON_AGENT_DATA_BINDING_H_

#include <pybind11/pybind11.h>

namespace dragon::client {

// Adds agent_pull, agent_push, agent_dict, agent_channel and DataPlaneError
// (a RuntimeError whose message names the status code and the service's
// message, and whose `code` attribute is the code's name as gRPC names it,
// e.g. "RESOURCE_EXHAUSTED").
void RegisterAgentData(pybind11::module_& m);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_PYTHON_AGENT_DATA_BINDING_H_
