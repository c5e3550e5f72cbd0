#include "daemon/launchers/slurm_tools.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "daemon/launchers/host_list.h"

namespace dragon::daemon {
namespace {

bool Number(absl::string_view text, int64_t* out) {
  if (text.empty() || text.size() > 9) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return absl::SimpleAtoi(text, out);
}

}  // namespace

absl::StatusOr<absl::Duration> ParseSlurmTime(const std::string& text, const std::string& flag) {
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " '", text, "' ", why,
        ": give MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES "
        "or DAYS-HOURS:MINUTES:SECONDS (as sbatch --time takes it), e.g. 30 or 01:00:00"));
  };
  const std::string t(absl::StripAsciiWhitespace(text));
  if (t.empty()) return bad("is empty");
  int64_t days = 0, hours = 0, minutes = 0, seconds = 0;
  std::vector<absl::string_view> fields;
  const size_t dash = t.find('-');
  if (dash != std::string::npos) {
    if (!Number(absl::string_view(t).substr(0, dash), &days)) return bad("is not a time");
    fields = absl::StrSplit(absl::string_view(t).substr(dash + 1), ':');
    if (fields.size() > 3) return bad("is not a time");
    int64_t v[3] = {0, 0, 0};
    for (size_t i = 0; i < fields.size(); ++i) {
      if (!Number(fields[i], &v[i])) return bad("is not a time");
    }
    hours = v[0];
    minutes = v[1];
    seconds = v[2];
  } else {
    fields = absl::StrSplit(t, ':');
    if (fields.size() > 3) return bad("is not a time");
    int64_t v[3] = {0, 0, 0};
    for (size_t i = 0; i < fields.size(); ++i) {
      if (!Number(fields[i], &v[i])) return bad("is not a time");
    }
    if (fields.size() == 1) {
      minutes = v[0];
    } else if (fields.size() == 2) {
      minutes = v[0];
      seconds = v[1];
    } else {
      hours = v[0];
      minutes = v[1];
      seconds = v[2];
    }
  }
  const absl::Duration d = absl::Hours(24 * days + hours) + absl::Minutes(minutes) +
                           absl::Seconds(seconds);
  if (d <= absl::ZeroDuration()) return bad("is no time at all");
  return d;
}

std::string FormatWalltime(absl::Duration d) {
  const int64_t total = absl::ToInt64Seconds(d);
  return absl::StrFormat("%02d:%02d:%02d", total / 3600, (total / 60) % 60, total % 60);
}

int MinCpusPerNode(const std::string& cpus_per_node) {
  int best = 0;
  for (absl::string_view part : absl::StrSplit(cpus_per_node, ',', absl::SkipEmpty())) {
    part = part.substr(0, part.find('('));  // "2(x3)" -> "2"
    int64_t n = 0;
    if (!Number(absl::StripAsciiWhitespace(part), &n) || n <= 0) return 0;
    if (best == 0 || n < best) best = static_cast<int>(n);
  }
  return best;
}

absl::StatusOr<std::vector<std::string>> ParseHostnames(const std::string& output) {
  std::vector<std::string> hosts;
  std::set<std::string> seen;
  for (absl::string_view line : absl::StrSplit(output, '\n', absl::SkipWhitespace())) {
    const std::string host(absl::StripAsciiWhitespace(line));
    if (std::string problem = HostNameProblem(host); !problem.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("scontrol show hostnames printed '", host,
                                                     "', which ", problem));
    }
    if (seen.insert(host).second) hosts.push_back(host);
  }
  if (hosts.empty()) return absl::InvalidArgumentError("scontrol show hostnames printed no host");
  return hosts;
}

JobPhase SlurmJobPhase(const std::string& state) {
  // squeue may add a '+' (CANCELLED+) or a reason after a space.
  const std::string s = absl::AsciiStrToUpper(state.substr(0, state.find_first_of(" +")));
  if (s == "RUNNING") return JobPhase::kRunning;
  static const std::set<std::string> kWaiting = {
      "PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
      "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"};
  if (kWaiting.count(s) != 0) return JobPhase::kPending;
  return JobPhase::kEnded;  // COMPLETING, COMPLETED, CANCELLED, FAILED, TIMEOUT, NODE_FAIL, ...
}

absl::StatusOr<JobStatus> ParseSqueueLine(const std::string& line) {
  std::vector<std::string> parts = absl::StrSplit(absl::StripAsciiWhitespace(line), '|');
  if (parts.size() != 3 || parts[0].empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected squeue output '", line, "'"));
  }
  JobStatus status;
  status.state = parts[0];
  status.phase = SlurmJobPhase(parts[0]);
  status.reason = parts[1] == "None" ? "" : parts[1];
  status.nodelist = parts[2];
  return status;
}

bool IsHopelessPendingReason(const std::string& reason) {
  static const std::set<std::string> kHopeless = {
      "PartitionConfig",        "PartitionNodeLimit",        "PartitionTimeLimit",
      "BadConstraints",         "InvalidAccount",            "InvalidQOS",
      "AccountNotAllowed",      "QOSNotAllowed",             "DependencyNeverSatisfied",
      "AssocMaxNodesPerJobLimit", "AssocMaxWallDurationPerJobLimit", "QOSMaxNodePerJobLimit",
      "QOSMaxWallDurationPerJobLimit"};
  return kHopeless.count(reason) != 0;
}

absl::StatusOr<JobStatus> ParseQstatFull(const std::string& output) {
  JobStatus status;
  bool have_state = false;
  std::string exec_host;
  for (absl::string_view raw : absl::StrSplit(output, '\n')) {
    absl::string_view line = absl::StripAsciiWhitespace(raw);
    const size_t eq = line.find(" = ");
    if (eq == absl::string_view::npos) continue;
    const absl::string_view key = absl::StripAsciiWhitespace(line.substr(0, eq));
    const std::string value(absl::StripAsciiWhitespace(line.substr(eq + 3)));
    if (key == "job_state") {
      status.state = value;
      have_state = true;
    } else if (key == "exec_host") {
      exec_host = value;
    } else if (key == "comment") {
      status.reason = value;
    }
  }
  if (!have_state) {
    return absl::InvalidArgumentError(
        absl::StrCat("qstat -f printed no job_state: '", output.substr(0, 300), "'"));
  }
  const std::string s = absl::AsciiStrToUpper(status.state);
  if (s == "R") {
    status.phase = JobPhase::kRunning;
  } else if (s == "E" || s == "C" || s == "F" || s == "X") {
    status.phase = JobPhase::kEnded;
  } else {
    status.phase = JobPhase::kPending;  // Q, H, W, T, S, B, M, U
  }
  status.nodelist = absl::StrJoin(ExecHostNodes(exec_host), ",");
  return status;
}

std::vector<std::string> ExecHostNodes(const std::string& exec_host) {
  std::vector<std::string> nodes;
  std::set<std::string> seen;
  for (absl::string_view part : absl::StrSplit(exec_host, '+', absl::SkipWhitespace())) {
    std::string host(absl::StripAsciiWhitespace(part.substr(0, part.find('/'))));
    if (!host.empty() && seen.insert(host).second) nodes.push_back(host);
  }
  return nodes;
}

std::vector<std::string> ParsePbsnodes(const std::string& output) {
  std::vector<std::string> nodes;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (line.empty() || absl::ascii_isspace(static_cast<unsigned char>(line[0]))) continue;
    const std::string host(absl::StripAsciiWhitespace(line));
    if (HostNameProblem(host).empty()) nodes.push_back(host);
  }
  return nodes;
}

std::vector<std::string> MissingPrograms(const std::vector<std::string>& programs,
                                         const std::string& path) {
  std::vector<std::string> missing;
  for (const std::string& program : programs) {
    bool found = false;
    if (program.find('/') != std::string::npos) {
      found = access(program.c_str(), X_OK) == 0;
    } else {
      for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
        const std::string candidate = absl::StrCat(dir, "/", program);
        struct stat st {};
        if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
            access(candidate.c_str(), X_OK) == 0) {
          found = true;
          break;
        }
      }
    }
    if (!found) missing.push_back(program);
  }
  return missing;
}

}  // namespace dragon::daemon
