#include "common/head_locator.h"

#include <dirent.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/host.h"
#include "common/token.h"
#include "google/protobuf/util/json_util.h"

namespace dragon::common {
namespace {

std::string GetEnv(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

std::string JoinPath(const std::string& dir, absl::string_view name) {
  if (!dir.empty() && dir.back() == '/') return absl::StrCat(dir, name);
  return absl::StrCat(dir, "/", name);
}

// Returns "" when `value` is a valid HOST:PORT, else the reason.
std::string HostPortProblem(absl::string_view value) {
  if (value.empty()) return "expected HOST:PORT, got an empty string";
  absl::string_view host, port;
  if (value.front() == '[') {
    const size_t close = value.find(']');
    if (close == absl::string_view::npos) return "unclosed '[' in IPv6 address";
    host = value.substr(1, close - 1);
    absl::string_view rest = value.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return "expected [IPV6]:PORT";
    port = rest.substr(1);
  } else {
    const size_t colon = value.rfind(':');
    if (colon == absl::string_view::npos) return "expected HOST:PORT (no ':PORT')";
    host = value.substr(0, colon);
    port = value.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) {
      return "an IPv6 address needs brackets, e.g. [::1]:PORT";
    }
  }
  if (host.empty()) return "empty HOST in HOST:PORT";
  for (char c : host) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) || c == '/') {
      return "HOST contains whitespace or '/'";
    }
  }
  uint32_t port_number = 0;
  // SimpleAtoi accepts a sign and surrounding spaces; a port is digits only.
  const bool digits_only =
      !port.empty() && std::all_of(port.begin(), port.end(), [](char c) {
        return absl::ascii_isdigit(static_cast<unsigned char>(c));
      });
  if (!digits_only || !absl::SimpleAtoi(port, &port_number) || port_number == 0 ||
      port_number > 65535) {
    return absl::StrCat("PORT '", port, "' is not a number in 1..65535");
  }
  return "";
}

}  // namespace

std::string DragonHome() {
  std::string home = GetEnv("DRAGON_HOME");
  if (!home.empty()) return home;
  std::string user_home = GetEnv("HOME");
  if (user_home.empty()) {
    // No $HOME (e.g. under some batch systems): fall back to the passwd entry
    // rather than a relative "~/.dragon".
    if (const passwd* pw = getpwuid(getuid()); pw != nullptr && pw->pw_dir != nullptr) {
      user_home = pw->pw_dir;
    }
  }
  return JoinPath(user_home.empty() ? "." : user_home, ".dragon");
}

absl::Status ValidateHostPort(absl::string_view value, absl::string_view what) {
  std::string problem = HostPortProblem(value);
  if (problem.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("bad ", what, " address '", value, "': ", problem));
}

absl::StatusOr<dragon::v1::RunInfo> ReadRunInfo(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat(path, " does not exist"));
    }
    return absl::PermissionDeniedError(
        absl::StrCat("cannot read ", path, ": ", std::strerror(err)));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  dragon::v1::RunInfo info;
  google::protobuf::util::JsonParseOptions options;
  // A newer dragond may write fields this build does not know yet.
  options.ignore_unknown_fields = true;
  auto parsed = google::protobuf::util::JsonStringToMessage(buffer.str(), &info, options);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot parse ", path, ": ", std::string(parsed.message())));
  }
  std::string problem = HostPortProblem(info.address());
  if (!problem.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, " has no usable address ('", info.address(), "': ", problem, ")"));
  }
  return info;
}

namespace {

// The head.json paths of every run directory under HOME/runs.
std::vector<std::string> RunInfoPaths(const std::string& home) {
  std::vector<std::string> paths;
  const std::string runs = JoinPath(home, "runs");
  if (DIR* dir = opendir(runs.c_str()); dir != nullptr) {
    while (const dirent* entry = readdir(dir)) {
      const std::string name = entry->d_name;
      if (name == "." || name == "..") continue;
      paths.push_back(JoinPath(JoinPath(runs, name), "head.json"));
    }
    closedir(dir);
  }
  return paths;
}

}  // namespace

bool HeadProcessAlive(const dragon::v1::RunInfo& info) {
  if (info.pid() <= 0 || info.host() != Hostname()) return false;
  if (kill(info.pid(), 0) != 0 && errno != EPERM) return false;
  std::ifstream comm(absl::StrCat("/proc/", info.pid(), "/comm"));
  std::string name;
  if (!std::getline(comm, name)) return true;  // no /proc to ask: the pid exists
  return name == "dragond";
}

std::vector<dragon::v1::RunInfo> LiveRuns(const std::string& home, const HeadAlive& alive) {
  std::vector<dragon::v1::RunInfo> live;
  for (const std::string& path : RunInfoPaths(home)) {
    absl::StatusOr<dragon::v1::RunInfo> info = ReadRunInfo(path);
    if (info.ok() && alive(*info)) live.push_back(*std::move(info));
  }
  std::sort(live.begin(), live.end(), [](const auto& a, const auto& b) {
    return a.started_us() > b.started_us();
  });
  return live;
}

namespace {

// A head.json under $DRAGON_HOME whose address is `address`: current first,
// then every run directory (a user with several heads on one machine).
std::optional<dragon::v1::RunInfo> FindRunInfoFor(const std::string& address) {
  const std::string home = DragonHome();
  std::vector<std::string> candidates = {JoinPath(JoinPath(home, "current"), "head.json")};
  for (std::string& path : RunInfoPaths(home)) candidates.push_back(std::move(path));
  for (const std::string& path : candidates) {
    absl::StatusOr<dragon::v1::RunInfo> info = ReadRunInfo(path);
    if (info.ok() && info->address() == address) return *std::move(info);
  }
  return std::nullopt;
}

absl::Status FillCredentials(const LocateOptions& options, HeadLocation* location) {
  if (!options.token_file.empty()) {
    absl::StatusOr<std::string> token = ReadTokenFile(options.token_file);
    if (!token.ok()) return token.status();
    location->token = *std::move(token);
    location->token_source = absl::StrCat("--token-file ", options.token_file);
  } else if (const std::string env = GetEnv(kTokenEnv); !env.empty()) {
    if (absl::Status valid = ValidateToken(env, absl::StrCat("$", kTokenEnv)); !valid.ok()) {
      return valid;
    }
    location->token = env;
    location->token_source = absl::StrCat("$", kTokenEnv);
  } else if (location->run_info && !location->run_info->token_file().empty()) {
    const std::string& path = location->run_info->token_file();
    absl::StatusOr<std::string> token = ReadTokenFile(path);
    if (!token.ok()) return token.status();
    location->token = *std::move(token);
    location->token_source = path;
  } else {
    location->token_source = absl::StrCat(
        "no token found: not given (--token-file), no $", kTokenEnv, ", and no head.json under ",
        DragonHome(), " names ", location->address);
  }
  if (!options.tls_ca.empty()) {
    location->tls_ca = options.tls_ca;
  } else if (const std::string env = GetEnv(kTlsCaEnv); !env.empty()) {
    location->tls_ca = env;
  } else if (location->run_info) {
    location->tls_ca = location->run_info->tls_ca();
  }
  return absl::OkStatus();
}

absl::StatusOr<HeadLocation> LocateAddress(const LocateOptions& options) {
  HeadLocation location;
  if (!options.explicit_address.empty()) {
    absl::Status valid = ValidateHostPort(options.explicit_address, "--head");
    if (!valid.ok()) return valid;
    location.address = options.explicit_address;
    location.source = "--head";
    return location;
  }
  const std::string env_head = GetEnv("DRAGON_HEAD");
  if (!env_head.empty()) {
    absl::Status valid = ValidateHostPort(env_head, "$DRAGON_HEAD");
    if (!valid.ok()) return valid;
    location.address = env_head;
    location.source = "$DRAGON_HEAD";
    return location;
  }
  // An explicit --run-dir is authoritative: when it has no head.json we say
  // so instead of silently talking to whatever run "current" points at.
  const std::string dir =
      options.run_dir.empty() ? JoinPath(DragonHome(), "current") : options.run_dir;
  const std::string path = JoinPath(dir, "head.json");
  absl::StatusOr<dragon::v1::RunInfo> info = ReadRunInfo(path);
  if (absl::IsNotFound(info.status())) {
    if (options.run_dir.empty()) {
      // `current` is gone, yet heads of other runs may run (their owner
      // started another head and stopped it): name them rather than deny them.
      std::vector<std::string> heads;
      for (const auto& run : LiveRuns(DragonHome())) {
        heads.push_back(absl::StrCat("run ", run.run_id(), " at ", run.address(), " (--run-dir ",
                                     run.run_dir(), " or --head ", run.address(), ")"));
      }
      if (!heads.empty()) {
        return absl::NotFoundError(absl::StrCat(
            "no current dragond (no $DRAGON_HEAD and no ", path, "), but ",
            heads.size() == 1 ? "the head of another run is" : "heads of other runs are",
            " running: ", absl::StrJoin(heads, "; "), "; say which with --run-dir or --head"));
      }
    }
    return absl::NotFoundError(absl::StrCat("no dragond is running (no $DRAGON_HEAD and no ",
                                            path,
                                            "); start one with 'dragond start'"));
  }
  if (!info.ok()) return info.status();
  location.address = info->address();
  location.source = path;
  location.run_info = *std::move(info);
  return location;
}

}  // namespace

absl::StatusOr<HeadLocation> LocateHead(const LocateOptions& options) {
  absl::StatusOr<HeadLocation> location = LocateAddress(options);
  if (!location.ok()) return location;
  if (!location->run_info) location->run_info = FindRunInfoFor(location->address);
  if (absl::Status s = FillCredentials(options, &*location); !s.ok()) return s;
  return location;
}

}  // namespace dragon::common
