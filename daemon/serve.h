// A running head: the gRPC server, the Head, liveness ticks, the run's
// token and head.json, and the launcher's agents, from start to an orderly
// stop (signal, Shutdown RPC, death of the parent).
#ifndef DRAGON_DAEMON_SERVE_H_
#define DRAGON_DAEMON_SERVE_H_

#include <string>

#include "daemon/start_config.h"

namespace dragon::daemon {

inline constexpr char kDragondVersion[] = "0.1.0";

// Serves until told to stop; returns the process exit code. `ready_fd` (or
// -1) receives "PROGRESS <text>" lines while agents start, then one line
// "OK <text>" or "ERROR <message>", for the process that daemonized us;
// without it the same is printed (progress to stderr).
int Serve(const StartConfig& config, const std::string& run_dir, const std::string& run_id,
          int ready_fd);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_SERVE_H_
