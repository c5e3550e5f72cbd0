// The run directory: where a run's head.json and logs live, so that people
// and tools can find a head without being told its address.
#ifndef DRAGON_DAEMON_RUN_DIR_H_
#define DRAGON_DAEMON_RUN_DIR_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/head_locator.h"
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

// Removes head.json. When the `current` link still points at run_dir, it
// points it at the newest other run of $DRAGON_HOME whose head is alive
// (common::LiveRuns: a second `dragond start` had taken `current` from that
// one, and stopping the second must not hide the first from dragonctl and
// `dragond stop`), or removes it when there is none. Returns that run.
std::optional<dragon::v1::RunInfo> RemoveRunInfo(
    const std::string& home, const std::string& run_dir,
    const common::HeadAlive& alive = common::HeadProcessAlive);

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_RUN_DIR_H_
