#include "daemon/launchers/host_list.h"

#include <fstream>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dragon::daemon {
namespace {

absl::Status AddHost(const std::string& host, const std::string& where, std::set<std::string>* seen,
                     std::vector<std::string>* out) {
  if (std::string problem = HostNameProblem(host); !problem.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": '", host, "' ", problem));
  }
  if (seen->insert(host).second) out->push_back(host);
  return absl::OkStatus();
}

}  // namespace

std::string HostNameProblem(const std::string& host) {
  if (host.empty()) return "is empty";
  if (host[0] == '-') return "starts with '-' (it would be read as an ssh option)";
  for (char c : host) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_' &&
        c != ':' && c != '@') {
      return absl::StrCat("is not a host name (it holds '", std::string(1, c), "')");
    }
  }
  return "";
}

absl::StatusOr<std::vector<std::string>> ParseHostList(const std::string& list,
                                                       const std::string& origin) {
  std::vector<std::string> hosts;
  std::set<std::string> seen;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    const std::string host(absl::StripAsciiWhitespace(part));
    if (absl::Status s = AddHost(host, origin, &seen, &hosts); !s.ok()) return s;
  }
  if (hosts.empty()) return absl::InvalidArgumentError(absl::StrCat(origin, " lists no hosts"));
  return hosts;
}

absl::StatusOr<std::vector<std::string>> ReadHostFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the host file ", path));
  std::vector<std::string> hosts;
  std::set<std::string> seen;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty()) continue;
    // "host slots=N" (Open MPI style) or "host:N" (MPICH style): the host.
    std::string host(text.substr(0, text.find_first_of(" \t")));
    if (size_t colon = host.rfind(':'); colon != std::string::npos &&
        host.find(':') == colon && colon + 1 < host.size() &&
        absl::ascii_isdigit(static_cast<unsigned char>(host[colon + 1]))) {
      host.resize(colon);
    }
    if (absl::Status s = AddHost(host, absl::StrCat(path, " line ", number), &seen, &hosts);
        !s.ok()) {
      return s;
    }
  }
  if (hosts.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the host file ", path, " lists no hosts"));
  }
  return hosts;
}

}  // namespace dragon::daemon
