// The run's secret: made by dragond, kept in a 0600 file of the 0700 run
// directory, read by clients and agents (docs/INTERFACES.md, "Authentication").
#ifndef DRAGON_COMMON_TOKEN_H_
#define DRAGON_COMMON_TOKEN_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dragon::common {

// The environment variable through which agents and clients may be given the
// token itself (never a command-line flag: `ps` shows those to every user).
inline constexpr char kTokenEnv[] = "DRAGON_TOKEN";
// A CA certificate (PEM file) to verify the head's TLS certificate with.
inline constexpr char kTlsCaEnv[] = "DRAGON_TLS_CA";
// The token file's name in the run directory.
inline constexpr char kTokenFileName[] = "token";

// 32 bytes from the kernel's random source, as 64 lowercase hex digits.
absl::StatusOr<std::string> NewToken();

// Creates `path` with mode 0600 (replacing a previous file) holding `token`
// and a newline. Errors name the path.
absl::Status WriteTokenFile(const std::string& path, const std::string& token);

// The token in `path` (surrounding whitespace removed). Refuses a file that
// other users can read or write (it would not be a secret), an empty one,
// and one that is not a plausible token, naming the path.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// Whether `token` looks like one (8..256 printable characters without spaces):
// what clients check before sending one taken from the environment.
absl::Status ValidateToken(const std::string& token, const std::string& origin);

}  // namespace dragon::common

#endif  // DRAGON_COMMON_TOKEN_H_
