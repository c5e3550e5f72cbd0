// dragon_parsl._core.ClientDataPlane: a workflow on a host without an agent
// as a data-plane peer of the agents (client/client_data_plane.h).
#ifndef DRAGON_CLIENT_PYTHON_CLIENT_DATA_PLANE_BINDING_H_
#define DRAGON_CLIENT_PYTHON_CLIENT_DATA_PLANE_BINDING_H_

#include <pybind11/pybind11.h>

namespace dragon::client {

// Adds ClientDataPlane and ClientDataPlaneError (a RuntimeError whose `code`
// attribute names the absl code, e.g. "UNAVAILABLE").
void RegisterClientDataPlane(pybind11::module_& m);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_PYTHON_CLIENT_DATA_PLANE_BINDING_H_
