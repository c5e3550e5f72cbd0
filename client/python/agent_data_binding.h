// dragon_parsl._core.agent_pull / agent_push: a process on a node asks its
// agent's AgentData service (agent/data_service.h, on the Unix socket the
// agent publishes as NodeInfo.data_socket and gives its workers as
// $DRAGON_AGENT_DATA_SOCKET) to move a block of a shared-memory pool between
// nodes.
#ifndef DRAGON_CLIENT_PYTHON_AGENT_DATA_BINDING_H_
#define DRAGON_CLIENT_PYTHON_AGENT_DATA_BINDING_H_

#include <pybind11/pybind11.h>

namespace dragon::client {

// Adds agent_pull, agent_push and DataPlaneError (a RuntimeError whose
// message names the gRPC code and the service's message, and whose `code`
// attribute is the code's name, e.g. "RESOURCE_EXHAUSTED").
void RegisterAgentData(pybind11::module_& m);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_PYTHON_AGENT_DATA_BINDING_H_
