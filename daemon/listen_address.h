// Where the head listens and which address it tells agents and clients
// (dragond start --listen ADDRESS|INTERFACE). Agents on other nodes must be
// able to reach it, so with a remote launcher the default is every
// interface, advertising the local address that routes to the agents' nodes
// (a loopback address would reach only this node).
#ifndef DRAGON_DAEMON_LISTEN_ADDRESS_H_
#define DRAGON_DAEMON_LISTEN_ADDRESS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dragon::daemon {

struct ListenPlan {
  std::string bind_host;       // the server binds this (an address, or 0.0.0.0)
  std::string advertise_host;  // agents and clients dial this
};

// `listen`: "" (default), an IP address, "0.0.0.0", a host name, or the
// name of a network interface (e.g. ib0, tb0). `remote`: agents run on
// other nodes. `peers`: hosts where they run, if known (for the default).
// Errors say what could not be resolved and what to give instead.
absl::StatusOr<ListenPlan> PlanListen(const std::string& listen, bool remote,
                                      const std::vector<std::string>& peers);

// The IPv4 address of interface `name`, or NotFound.
absl::StatusOr<std::string> InterfaceAddress(const std::string& name);

// The local address the kernel would use to reach `host` (no packet is
// sent), or an error when the host does not resolve or has no route.
absl::StatusOr<std::string> SourceAddressToward(const std::string& host);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LISTEN_ADDRESS_H_
