// Lists of hosts as users give them: --hosts h1,h2, a --hostfile, a
// PBS_NODEFILE (one line per slot), Slurm's expanded node list.
#ifndef DRAGON_DAEMON_LAUNCHERS_HOST_LIST_H_
#define DRAGON_DAEMON_LAUNCHERS_HOST_LIST_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dragon::daemon {

// Why `host` cannot be a host name for ssh ("" when it can): empty, a
// leading '-' (it would be read as an ssh option), or characters outside
// letters, digits, '.', '-', '_', ':' (IPv6) and '@' (user@host).
std::string HostNameProblem(const std::string& host);

// "h1,h2,h3": duplicates dropped, order kept. Errors name `origin` and the entry.
absl::StatusOr<std::vector<std::string>> ParseHostList(const std::string& list,
                                                       const std::string& origin);

// One host per line; blank lines and '#' comments ignored; "host slots=4"
// and "host:4" give host; repeated hosts (a PBS_NODEFILE lists one per slot)
// count once, in order of first appearance. An empty list is an error.
absl::StatusOr<std::vector<std::string>> ReadHostFile(const std::string& path);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_LAUNCHERS_HOST_LIST_H_
