// How dragond runs in the background: `dragond start` forks, the child
// detaches (new session, output to the log) and serves, and the parent
// returns once the child says it listens (or why it could not), so that
// `dragond start && dragonctl status` works in a job script.
#ifndef DRAGON_DAEMON_DAEMONIZE_H_
#define DRAGON_DAEMON_DAEMONIZE_H_

#include <functional>
#include <string>

#include "absl/status/status.h"

namespace dragon::daemon {

// Logging to `log_file` at `level` (trace..error, off), and warnings to
// stderr too with `to_stderr`. Errors name the level or the file.
absl::Status SetUpLogging(const std::string& log_file, const std::string& level, bool to_stderr);

// In the parent: waits for the child's one line and returns the process's
// exit code (0 ready, 1 not). In the child: sets up logging and returns
// serve(ready_fd), where serve writes "OK <message>" or "ERROR <message>"
// to ready_fd once it knows.
int Daemonize(const std::string& log_file, const std::string& log_level,
              const std::function<int(int ready_fd)>& serve);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_DAEMONIZE_H_
