#include "agent/mpi_rank_reports.h"

#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace dragon::agent {

std::vector<RankReport> ParseRankReports(const std::string& text, const std::string& tag) {
  std::vector<RankReport> out;
  const std::string key = absl::StrCat("dragon-mpi-rank[", tag, "]: rank ");
  size_t pos = 0;
  while ((pos = text.find(key, pos)) != std::string::npos) {
    const size_t end = text.find('\n', pos);
    if (end == std::string::npos) break;  // incomplete line
    absl::string_view line(text.data() + pos + key.size(), end - pos - key.size());
    pos = end + 1;
    RankReport r;
    r.text = absl::StrCat("rank ", line);
    // "R on HOST (pid P) exited with code C", "R on HOST could not start 'X': why"
    const size_t on = line.find(" on ");
    if (on == absl::string_view::npos || !absl::SimpleAtoi(line.substr(0, on), &r.rank)) continue;
    absl::string_view rest = line.substr(on + 4);
    const size_t space = rest.find(' ');
    if (space == absl::string_view::npos) continue;
    r.host = std::string(rest.substr(0, space));
    rest.remove_prefix(space + 1);
    if (absl::ConsumePrefix(&rest, "(pid ")) {
      const size_t close = rest.find(") ");
      if (close == absl::string_view::npos || !absl::SimpleAtoi(rest.substr(0, close), &r.pid)) {
        continue;
      }
      rest.remove_prefix(close + 2);
    }
    int value = 0;
    if (absl::ConsumePrefix(&rest, "exited with code ") && absl::SimpleAtoi(rest, &value)) {
      r.state = "exited";
      r.exit_code = value;
    } else if (absl::ConsumePrefix(&rest, "was killed by signal ")) {
      r.state = "signaled";
      (void)absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &r.signal);
      r.exit_code = -1;
    } else if (absl::ConsumePrefix(&rest, "was stopped by signal ")) {
      r.state = "stopped";
      (void)absl::SimpleAtoi(rest.substr(0, rest.find(' ')), &r.signal);
      r.exit_code = -1;
    } else if (absl::StartsWith(rest, "could not start ")) {
      r.state = "unstarted";
      r.exit_code = 127;
    } else {
      continue;
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::string NewRankReportTag() {
  unsigned char bytes[8] = {};
  if (getrandom(bytes, sizeof(bytes), 0) != static_cast<ssize_t>(sizeof(bytes))) {
    const uint64_t fallback = static_cast<uint64_t>(getpid()) * 2654435761u ^
                              static_cast<uint64_t>(reinterpret_cast<uintptr_t>(&bytes));
    memcpy(bytes, &fallback, sizeof(bytes));
  }
  static const char kHex[] = "0123456789abcdef";
  std::string tag;
  for (unsigned char b : bytes) {
    tag.push_back(kHex[b >> 4]);
    tag.push_back(kHex[b & 15]);
  }
  return tag;
}

}  // namespace dragon::agent
