// Finding a running head (dragond) the way docs/INTERFACES.md "Finding the
// head" fixes it, so that dragonctl, dragond stop and the tests all agree.
#ifndef DRAGON_COMMON_HEAD_LOCATOR_H_
#define DRAGON_COMMON_HEAD_LOCATOR_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/common.pb.h"

namespace dragon::common {

// What the caller was told explicitly; empty strings mean "not given".
struct LocateOptions {
  std::string explicit_address;  // --head HOST:PORT
  std::string run_dir;           // --run-dir DIR
  std::string token_file;        // --token-file FILE
  std::string tls_ca;            // --tls-ca FILE
};

struct HeadLocation {
  std::string address;  // HOST:PORT, validated
  // Where the address came from, for messages: "--head", "$DRAGON_HEAD" or
  // the path of the head.json that was read.
  std::string source;
  // Set when the address came from a head.json, or when a head.json of
  // $DRAGON_HOME names the explicit address (that is where its token is).
  std::optional<dragon::v1::RunInfo> run_info;
  // The run's token (empty: none found) and where it came from, for
  // messages: "--token-file F", "$DRAGON_TOKEN", "F" (a token file) or a
  // sentence saying where none was found.
  std::string token;
  std::string token_source;
  std::string tls_ca;  // CA certificate to verify the head's TLS; empty: plaintext
};

// $DRAGON_HOME, or ~/.dragon ($HOME, else the passwd entry) when unset/empty.
std::string DragonHome();

// Checks that `value` is HOST:PORT (HOST may be a bracketed IPv6 literal,
// PORT 1..65535). `what` names the value's origin in the error, e.g.
// "--head" gives "bad --head address 'x': ...".
absl::Status ValidateHostPort(absl::string_view value, absl::string_view what);

// Parses a head.json file (RunInfo as protobuf JSON, snake_case names;
// unknown fields are ignored so that a newer dragond can add some).
// NotFound when the file does not exist; InvalidArgument when it cannot be
// parsed or has no valid address.
absl::StatusOr<dragon::v1::RunInfo> ReadRunInfo(const std::string& path);

// Whether the dragond a head.json describes is running: the head.json names
// this host, and its pid is a live process called dragond (not one that took
// over the pid of a head killed without cleaning up).
bool HeadProcessAlive(const dragon::v1::RunInfo& info);

// The runs under HOME/runs whose head.json describes a head that `alive` says
// runs, newest first (by started_us). Unreadable head.json files are skipped.
// Several heads on one machine are allowed; this is how the one that `current`
// no longer points at is still found.
using HeadAlive = std::function<bool(const dragon::v1::RunInfo&)>;
std::vector<dragon::v1::RunInfo> LiveRuns(const std::string& home,
                                          const HeadAlive& alive = HeadProcessAlive);

// First hit wins: explicit address, $DRAGON_HEAD, --run-dir DIR/head.json,
// $DRAGON_HOME/current/head.json. When nothing gives an address the error
// is NotFound with the INTERFACES.md text:
//   no dragond is running (no $DRAGON_HEAD and no <path>/head.json); start
//   one with 'dragond start'
// unless heads of other runs are running (LiveRuns): then it names them and
// how to reach them (--run-dir, --head).
//
// Then the credentials (docs/INTERFACES.md "Authentication"), first hit wins:
// token: --token-file, $DRAGON_TOKEN, the token_file of the head.json the
// address came from, or of a head.json under $DRAGON_HOME (current, then
// runs/*) whose address is the one given; none found is not an error (the
// head then refuses, saying where tokens are read). A token file that exists
// but cannot be used (other users may read it, empty, unreadable) is an error.
// TLS CA: --tls-ca, $DRAGON_TLS_CA, the tls_ca of that head.json.
absl::StatusOr<HeadLocation> LocateHead(const LocateOptions& options);

}  // namespace dragon::common

#endif  // DRAGON_COMMON_HEAD_LOCATOR_H_
