// What dragonctl's command line is made of besides the ABSL_FLAG definitions
// themselves (client/dragonctl.cc): the value types of its checked flags, the
// few argv rewrites done before absl::ParseCommandLine, and the wording of
// absl's usage errors. Kept apart from main so that it can be unit-tested.
//
// Each checked flag has its own type whose AbslParseFlag refuses a bad value
// with a sentence saying what is expected; absl then reports
//   Illegal value 'V' specified for flag 'N'; <sentence>
// which RephraseFlagError turns into dragonctl's "bad --N 'V': <sentence>".
#ifndef DRAGON_CLIENT_DRAGONCTL_FLAGS_H_
#define DRAGON_CLIENT_DRAGONCTL_FLAGS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/common.pb.h"

namespace dragon::client {

// --timeout SECS: a number of seconds > 0, at most a day.
struct TimeoutFlag {
  absl::Duration value;
};
bool AbslParseFlag(absl::string_view text, TimeoutFlag* out, std::string* error);
std::string AbslUnparseFlag(const TimeoutFlag& flag);

// --limit N: a whole number >= 0 (0 = the head's default); unset by default
// so that dragonctl can tell a --limit given to a command other than ps.
struct LimitFlag {
  std::optional<uint32_t> value;
};
bool AbslParseFlag(absl::string_view text, LimitFlag* out, std::string* error);
std::string AbslUnparseFlag(const LimitFlag& flag);

// --state STATE: a task state as users type it (client/format.h StateName).
struct StateFlag {
  std::optional<dragon::v1::TaskState> value;
};
bool AbslParseFlag(absl::string_view text, StateFlag* out, std::string* error);
std::string AbslUnparseFlag(const StateFlag& flag);

// argv as absl::ParseCommandLine should see it.
struct PreparedArgs {
  std::vector<std::string> storage;  // owns the strings `argv` points into
  std::vector<char*> argv;
  bool help = false;  // -h, -help or --help was given (and removed from argv)
};

// Flag names with dashes become absl's underscores (common::UnderscoreFlagNames:
// --run-dir and --run_dir both work), and -h/-help/--help before "--" are
// taken out: absl's own --help would print its flag list and exit 1, while
// dragonctl's help names the commands (or one command's details) and exits 0.
PreparedArgs PrepareArgs(int argc, char** argv);

// How a flag's absl name is shown to people: "run_dir" -> "--run-dir".
std::string DisplayFlag(absl::string_view absl_name);

// dragonctl's message (without the "dragonctl: " prefix) for a usage error
// absl reports while parsing. An "unknown flag" made of digits is a negative
// number, which can only have been meant as a task id.
std::string RephraseFlagError(absl::string_view absl_message);

// A task id as typed: a positive whole number. The error (without the
// "dragonctl: " prefix) explains what is expected.
std::optional<std::string> ParseTaskId(absl::string_view text, uint64_t* id);

// The hosts of `nodes add HOST...`: each argument is a host or a
// comma-separated list of them; repeated hosts count once, in the order
// given. The error (without the "dragonctl: " prefix) names the bad
// argument: none given, an empty name, one starting with '-', or one with
// characters a host name cannot hold (whitespace, quotes, '/', ...).
std::optional<std::string> ParseHostArgs(const std::vector<std::string>& args,
                                         std::vector<std::string>* hosts);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_DRAGONCTL_FLAGS_H_
