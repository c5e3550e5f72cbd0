// `dragond stop`: asks a running head to stop its agents and exit, and waits
// until it has.
#ifndef DRAGON_DAEMON_STOP_COMMAND_H_
#define DRAGON_DAEMON_STOP_COMMAND_H_

#include "absl/time/time.h"
#include "common/head_locator.h"

namespace dragon::daemon {

struct StopOptions {
  common::LocateOptions locate;  // which head, and its credentials
  absl::Duration timeout = absl::Seconds(30);
};

// The process exit code: 0 stopped, 1 not found / not reachable / refused /
// did not exit in time (the message on stderr says which).
int Stop(const StopOptions& options);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_STOP_COMMAND_H_
