// The run directory: where a run's head.json and logs live, so that people
// and tools can find a head without being told its address.
#ifndef DRAGON_DAEMON_RUN_DIR_H_
#define DRAGON_DAEMON_RUN_DIR_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/common.pb.h"

namespace dragon::daemon {

// A fresh id for a run: YYYYmmdd-HHMMSS-<pid>.
std::string NewRunId();

// Creates `path` and its parents (like mkdir -p). Errors name the path.
absl::Status MakeDirs(const std::string& path);

// Writes head.json atomically (temp file + rename) in info.run_dir().
absl::Status WriteRunInfo(const dragon::v1::RunInfo& info);

// Points $DRAGON_HOME/current at `run_dir` (atomically replacing the link).
absl::Status UpdateCurrentLink(const std::string& home, const std::string& run_dir);

// Removes head.json, and the `current` link if it still points at run_dir.
void RemoveRunInfo(const std::string& home, const std::string& run_dir);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_RUN_DIR_H_
