#include "client/dragonctl_flags.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/format.h"
#include "common/dashed_flags.h"

namespace dragon::client {
namespace {

constexpr double kMaxTimeoutSeconds = 86400;

bool AllDigits(absl::string_view text) {
  return !text.empty() && text.find_first_not_of("0123456789") == absl::string_view::npos;
}

// The text between the first pair of single quotes after `prefix`, if
// `message` starts with `prefix`; `rest` gets what follows the closing quote.
std::optional<std::string> QuotedAfter(absl::string_view message, absl::string_view prefix,
                                       absl::string_view* rest = nullptr) {
  if (!absl::ConsumePrefix(&message, prefix) || !absl::ConsumePrefix(&message, "'")) {
    return std::nullopt;
  }
  const size_t end = message.find('\'');
  if (end == absl::string_view::npos) return std::nullopt;
  if (rest != nullptr) *rest = message.substr(end + 1);
  return std::string(message.substr(0, end));
}

}  // namespace

bool AbslParseFlag(absl::string_view text, TimeoutFlag* out, std::string* error) {
  double secs = 0;
  if (!absl::SimpleAtod(text, &secs) || !std::isfinite(secs) || !(secs > 0) ||
      secs > kMaxTimeoutSeconds) {
    *error = "expected a number of seconds > 0 (at most 86400)";
    return false;
  }
  out->value = absl::Seconds(secs);
  return true;
}

std::string AbslUnparseFlag(const TimeoutFlag& flag) {
  return absl::StrCat(absl::ToDoubleSeconds(flag.value));
}

bool AbslParseFlag(absl::string_view text, LimitFlag* out, std::string* error) {
  if (text.empty()) {  // the default: not given
    out->value.reset();
    return true;
  }
  uint32_t limit = 0;
  if (!AllDigits(text) || !absl::SimpleAtoi(text, &limit)) {
    *error = "expected a whole number >= 0 (0 = the head's default)";
    return false;
  }
  out->value = limit;
  return true;
}

std::string AbslUnparseFlag(const LimitFlag& flag) {
  return flag.value ? absl::StrCat(*flag.value) : "";
}

bool AbslParseFlag(absl::string_view text, StateFlag* out, std::string* error) {
  if (text.empty()) {  // the default: every state
    out->value.reset();
    return true;
  }
  out->value = ParseStateName(text);
  if (!out->value) {
    *error = absl::StrCat("expected one of ", AcceptedStateNames());
    return false;
  }
  return true;
}

std::string AbslUnparseFlag(const StateFlag& flag) {
  return flag.value ? StateName(*flag.value) : "";
}

PreparedArgs PrepareArgs(int argc, char** argv) {
  PreparedArgs prepared;
  std::vector<std::string> underscored;
  common::UnderscoreFlagNames(argc, argv, &underscored);
  bool after_separator = false;
  for (size_t i = 0; i < underscored.size(); ++i) {
    const std::string& arg = underscored[i];
    if (i > 0 && !after_separator) {
      if (arg == "--") after_separator = true;
      if (arg == "-h" || arg == "-help" || arg == "--help") {
        prepared.help = true;
        continue;
      }
    }
    prepared.storage.push_back(arg);
  }
  for (std::string& s : prepared.storage) prepared.argv.push_back(s.data());
  return prepared;
}

std::string DisplayFlag(absl::string_view absl_name) {
  return absl::StrCat("--", absl::StrReplaceAll(absl_name, {{"_", "-"}}));
}

std::string RephraseFlagError(absl::string_view message) {
  absl::string_view rest;
  if (auto name = QuotedAfter(message, "Unknown command line flag ")) {
    // absl strips the leading dashes: "-5" arrives as flag '5'.
    if (!name->empty() && absl::ascii_isdigit(static_cast<unsigned char>((*name)[0]))) {
      uint64_t ignored = 0;
      if (auto bad = ParseTaskId(absl::StrCat("-", *name), &ignored)) return *bad;
    }
    return absl::StrCat("unknown flag '", DisplayFlag(*name), "' (see 'dragonctl --help')");
  }
  if (auto name = QuotedAfter(message, "Missing the value for the flag ")) {
    return absl::StrCat(DisplayFlag(*name), " needs a value");
  }
  if (auto value = QuotedAfter(message, "Illegal value ", &rest)) {
    // "Illegal value 'V' specified for flag 'N'; <what is expected>"
    absl::string_view after_name;
    if (auto name = QuotedAfter(absl::StripLeadingAsciiWhitespace(rest), "specified for flag ",
                                &after_name)) {
      absl::ConsumePrefix(&after_name, ";");
      after_name = absl::StripLeadingAsciiWhitespace(after_name);
      return absl::StrCat("bad ", DisplayFlag(*name), " '", *value, "'",
                          after_name.empty() ? "" : ": ", after_name);
    }
  }
  return std::string(message);
}

std::optional<std::string> ParseHostArgs(const std::vector<std::string>& args,
                                         std::vector<std::string>* hosts) {
  hosts->clear();
  for (const std::string& arg : args) {
    for (absl::string_view part : absl::StrSplit(arg, ',')) {
      const std::string host(absl::StripAsciiWhitespace(part));
      if (host.empty()) {
        return absl::StrCat("bad host list '", arg, "': an empty host name");
      }
      if (host[0] == '-') {
        return absl::StrCat("bad host '", host, "': a host name does not start with '-'");
      }
      for (char c : host) {
        if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' &&
            c != '_' && c != ':' && c != '@') {
          return absl::StrCat("bad host '", host, "': a host name cannot hold '",
                              std::string(1, c), "'");
        }
      }
      if (std::find(hosts->begin(), hosts->end(), host) == hosts->end()) hosts->push_back(host);
    }
  }
  if (hosts->empty()) {
    return "'nodes add' takes one or more hosts (usage: dragonctl nodes add HOST...)";
  }
  return std::nullopt;
}

std::optional<std::string> ParseTaskId(absl::string_view text, uint64_t* id) {
  if (!AllDigits(text) || !absl::SimpleAtoi(text, id) || *id == 0) {
    return absl::StrCat("bad task id '", text,
                        "': expected a positive whole number (the ID column of 'dragonctl ps')");
  }
  return std::nullopt;
}

}  // namespace dragon::client
