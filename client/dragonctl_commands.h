// What each dragonctl command does once its command line has been checked
// (client/dragonctl.cc): the calls to the head (status, nodes and its drain,
// undrain, add and remove --wait, ps, show, cancel, logs, top) and what they
// print, and dragonctl's exit codes and error lines. Kept apart from the
// dispatch so that dragonctl.cc is the command line and this is the work.
#ifndef DRAGON_CLIENT_DRAGONCTL_COMMANDS_H_
#define DRAGON_CLIENT_DRAGONCTL_COMMANDS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/head_client.h"
#include "proto/common.pb.h"

namespace dragon::client {

// Exit codes: 0 ok; 1 the head could not be found or reached, or refused the
// request; 2 the command line is wrong (nothing was sent).
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

// Says "dragonctl: <message>" on stderr; returns kExitUsage.
int Usage(const std::string& message);
// Says "dragonctl: <the status's message>" on stderr; returns kExitError.
int Fail(const absl::Status& status);

// A command and its arguments and flags, as dragonctl.cc checked them.
struct CommandLine {
  std::string name;  // a command of the table (client/dragonctl_help.h), not "help"
  bool json = false;
  uint64_t task_id = 0;                           // show, cancel, logs
  std::optional<dragon::v1::TaskState> state;     // ps --state
  std::optional<uint32_t> limit;                  // ps --limit
  int rank = -1;                                  // logs --rank; -1: every rank
  int64_t bytes = 1 << 20;                        // logs --bytes
  absl::Duration interval = absl::Seconds(2);     // top --interval
  uint64_t iterations = 0;                        // top --iterations
  std::optional<bool> drain;                      // nodes drain|undrain NODE
  std::vector<std::string> add_hosts;             // nodes add HOST...
  bool remove = false;                            // nodes remove NODE
  bool wait = false;                              // nodes remove NODE --wait
  std::string node_id;                            // nodes drain|undrain|remove NODE
};

// Runs `command` against `head`: prints the reply (as JSON with --json) on
// stdout, or the failure on stderr. Returns the exit code.
int RunCommand(HeadClient& head, const CommandLine& command);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_DRAGONCTL_COMMANDS_H_
