// dragonctl: look inside a running dragond (status, nodes, ps, show), cancel
// tasks, drain nodes, add nodes (ssh launcher) and remove them. Finds the head and its token like every other
// component does (common/head_locator.h) and talks to it through HeadClient.
//
// Command line: `dragonctl [FLAGS] COMMAND [ARGS]`, flags before or after the
// command. Flags are absl flags (the ABSL_FLAGs below, parsed by
// absl::ParseCommandLine, --run-dir and --run_dir alike); the command and
// its arguments are the positional arguments absl leaves.
//
// This file is the command line: the flags, parsing them, help and the
// checks of a command's arguments, then the call. The command table and the
// help texts are in client/dragonctl_help.h, what each command does with the
// head in client/dragonctl_commands.h.
//
// Exit codes: 0 ok; 1 the head could not be found or reached, or refused the
// request; 2 the command line is wrong (nothing was sent). absl itself exits
// 1 on a flag it cannot parse; its documented hook for fatal usage errors
// (absl/flags/usage_config.h) is used below to say so in dragonctl's words
// and exit 2 instead.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/dragonctl_commands.h"
#include "client/dragonctl_flags.h"
#include "client/dragonctl_help.h"
#include "client/head_client.h"
#include "common/head_locator.h"

// The flags stay in this file: --help and --helpfull list the flags defined
// here (client/dragonctl_help.h IsDragonctlFlagFile).
ABSL_FLAG(std::string, head, "",
          "the head to talk to (default: $DRAGON_HEAD, then the head.json of --run-dir, then "
          "$DRAGON_HOME/current/head.json; DRAGON_HOME defaults to ~/.dragon)");
ABSL_FLAG(std::string, run_dir, "", "use the head of the run in DIR (DIR/head.json)");
ABSL_FLAG(std::string, token_file, "",
          "read the run's token from FILE (mode 0600) (default: $DRAGON_TOKEN, then the token "
          "file named by the head.json the head was found through, or by a head.json under "
          "$DRAGON_HOME with the --head address)");
ABSL_FLAG(std::string, tls_ca, "",
          "verify the head's TLS certificate with the CA certificate in FILE (PEM) (default: "
          "$DRAGON_TLS_CA, then the run's head.json; none: plaintext)");
ABSL_FLAG(bool, json, false,
          "print the head's reply as JSON (protobuf field names, every field present)");
ABSL_FLAG(dragon::client::TimeoutFlag, timeout, dragon::client::TimeoutFlag{absl::Seconds(10)},
          "give up on the head after SECS seconds");
ABSL_FLAG(dragon::client::StateFlag, state, dragon::client::StateFlag{},
          "ps: only tasks in STATE, one of pending, scheduled, running, done, failed, cancelled");
ABSL_FLAG(dragon::client::LimitFlag, limit, dragon::client::LimitFlag{},
          "ps: at most N tasks (0 = the head's default, 1000)");
ABSL_FLAG(int, rank, -1, "logs: only this MPI rank's files (default: every rank's)");
ABSL_FLAG(int64_t, bytes, 1 << 20, "logs: at most the last N bytes of each file");
ABSL_FLAG(dragon::client::TimeoutFlag, interval, dragon::client::TimeoutFlag{absl::Seconds(2)},
          "top: seconds between samples (at least 0.1)");
ABSL_FLAG(int64_t, iterations, 0, "top: stop after N samples (0 = until Ctrl-C)");
ABSL_FLAG(bool, wait, false,
          "nodes remove: wait until the node is gone (its running tasks ended and its agent "
          "left), saying every 5 s what it still runs; exit 1 if it is lost instead");

namespace dragon::client {
namespace {

constexpr char kVersion[] = "0.1.0";

// While absl parses the command line: what it writes to std::cerr (its
// "ERROR: ..." lines, replaced by dragonctl's own message). Null otherwise.
std::ostringstream* g_absl_stderr = nullptr;

// `positional` is what absl::ParseCommandLine left: argv[0], the command and
// its arguments.
int Run(const std::vector<std::string>& positional, bool help) {
  if (positional.size() < 2) {
    if (help) {
      std::cout << GeneralHelp();
      return kExitOk;
    }
    std::cerr << GeneralHelp();
    return Usage("no command given");
  }
  const std::string& name = positional[1];
  const Command* command = FindCommand(name);
  if (command == nullptr) {
    return Usage(absl::StrCat("unknown command '", name, "'; commands: ", CommandNames()));
  }
  std::vector<std::string> args(positional.begin() + 2, positional.end());

  if (name == "help") {
    if (args.empty()) {
      std::cout << GeneralHelp();
      return kExitOk;
    }
    const Command* about = FindCommand(args[0]);
    if (about == nullptr || args.size() > 1) {
      return Usage(absl::StrCat("unknown command '", absl::StrJoin(args, " "),
                                "' for help; commands: ", CommandNames()));
    }
    std::cout << (about->name == std::string("help") ? GeneralHelp() : CommandHelp(*about));
    return kExitOk;
  }
  if (help) {
    std::cout << CommandHelp(*command);
    return kExitOk;
  }

  // Everything the command line can get wrong is checked before any RPC.
  const std::optional<dragon::v1::TaskState> state = absl::GetFlag(FLAGS_state).value;
  const std::optional<uint32_t> limit = absl::GetFlag(FLAGS_limit).value;
  if (name != "ps" && (state || limit)) {
    return Usage(absl::StrCat(state ? "--state" : "--limit", " is a flag of 'ps', not of '", name,
                              "'"));
  }
  const int rank_flag = absl::GetFlag(FLAGS_rank);
  const int64_t bytes_flag = absl::GetFlag(FLAGS_bytes);
  if (name != "logs" && (rank_flag != -1 || bytes_flag != (1 << 20))) {
    return Usage(absl::StrCat(rank_flag != -1 ? "--rank" : "--bytes", " is a flag of 'logs', not of '",
                              name, "'"));
  }
  if (rank_flag < -1) return Usage(absl::StrCat("--rank must be a rank >= 0, not ", rank_flag));
  if (bytes_flag < 1) return Usage(absl::StrCat("--bytes must be >= 1, not ", bytes_flag));
  const bool wait = absl::GetFlag(FLAGS_wait);
  const std::string sub = name == "nodes" && !args.empty() ? args[0] : "";
  if (wait && sub != "remove") {
    return Usage(absl::StrCat("--wait is a flag of 'nodes remove', not of '", name,
                              sub.empty() ? "" : " ", sub, "'"));
  }
  const absl::Duration interval = absl::GetFlag(FLAGS_interval).value;
  const int64_t iterations = absl::GetFlag(FLAGS_iterations);
  if (name != "top" && (interval != absl::Seconds(2) || iterations != 0)) {
    return Usage(absl::StrCat(iterations != 0 ? "--iterations" : "--interval",
                              " is a flag of 'top', not of '", name, "'"));
  }
  if (interval < absl::Milliseconds(100)) {
    return Usage(absl::StrCat("--interval must be at least 0.1 seconds, not ",
                              absl::ToDoubleSeconds(interval)));
  }
  if (iterations < 0) return Usage(absl::StrCat("--iterations must be >= 0, not ", iterations));
  uint64_t task_id = 0;
  std::optional<bool> drain;  // nodes drain|undrain NODE
  std::vector<std::string> add_hosts;  // nodes add HOST...
  bool remove = false;                 // nodes remove NODE
  std::string node_id;
  if (command->takes_task) {
    if (args.size() != 1) {
      return Usage(absl::StrCat("'", name, "' takes one task id, got ", args.size(),
                                " arguments (usage: dragonctl ", name, " TASK)"));
    }
    if (auto err = ParseTaskId(args[0], &task_id)) return Usage(*err);
  } else if (name == "nodes" && sub == "add") {
    if (auto err = ParseHostArgs({args.begin() + 1, args.end()}, &add_hosts)) return Usage(*err);
  } else if (name == "nodes" && !args.empty()) {
    if (sub != "drain" && sub != "undrain" && sub != "remove") {
      return Usage(absl::StrCat("unknown 'nodes' command '", sub,
                                "'; use 'nodes', 'nodes drain NODE' or 'nodes undrain NODE' "
                                "(placement), 'nodes add HOST...' or 'nodes remove NODE' "
                                "(membership)"));
    }
    if (args.size() != 2 || args[1].empty()) {
      return Usage(absl::StrCat("'nodes ", sub, "' takes one node id (the NODE column of "
                                "'dragonctl nodes'), got ", args.size() - 1, " arguments"));
    }
    if (sub == "remove") {
      remove = true;
    } else {
      drain = sub == "drain";
    }
    node_id = args[1];
  } else if (!args.empty()) {
    return Usage(absl::StrCat("'", name, "' takes no arguments, got '", absl::StrJoin(args, " "),
                              "'"));
  }
  common::LocateOptions locate;
  locate.explicit_address = absl::GetFlag(FLAGS_head);
  locate.run_dir = absl::GetFlag(FLAGS_run_dir);
  locate.token_file = absl::GetFlag(FLAGS_token_file);
  locate.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  if (!locate.explicit_address.empty()) {
    absl::Status valid = common::ValidateHostPort(locate.explicit_address, "--head");
    if (!valid.ok()) return Usage(std::string(valid.message()));
  }

  absl::StatusOr<common::HeadLocation> location = common::LocateHead(locate);
  if (!location.ok()) return Fail(location.status());
  absl::StatusOr<std::unique_ptr<HeadClient>> client =
      HeadClient::Create(*location, absl::GetFlag(FLAGS_timeout).value);
  if (!client.ok()) return Fail(client.status());

  CommandLine request;
  request.name = name;
  request.json = absl::GetFlag(FLAGS_json);
  request.task_id = task_id;
  request.state = state;
  request.limit = limit;
  request.rank = rank_flag;
  request.bytes = bytes_flag;
  request.interval = interval;
  request.iterations = static_cast<uint64_t>(iterations);
  request.drain = drain;
  request.add_hosts = std::move(add_hosts);
  request.remove = remove;
  request.wait = wait;
  request.node_id = std::move(node_id);
  return RunCommand(**client, request);
}

// absl exits the process (status 1) when a flag cannot be parsed: if it ever
// does so without calling the hook below, what it wrote is not lost.
void ShowAbslStderrAtExit() {
  if (g_absl_stderr != nullptr) std::fputs(g_absl_stderr->str().c_str(), stderr);
}

// The positional arguments (argv[0], command, arguments) after absl parsed
// the flags; exits 2 on a usage error absl finds (see the hook below).
std::vector<std::string> ParseFlags(PreparedArgs& prepared) {
  std::ostringstream absl_stderr;
  std::streambuf* real_stderr = std::cerr.rdbuf(absl_stderr.rdbuf());
  g_absl_stderr = &absl_stderr;
  std::atexit(ShowAbslStderrAtExit);
  std::vector<char*> rest =
      absl::ParseCommandLine(static_cast<int>(prepared.argv.size()), prepared.argv.data());
  g_absl_stderr = nullptr;
  std::cerr.rdbuf(real_stderr);
  std::cerr << absl_stderr.str();  // warnings, if any
  return std::vector<std::string>(rest.begin(), rest.end());
}

}  // namespace
}  // namespace dragon::client

// absl calls this after printing "ERROR: <message>" for a usage error that
// makes ParseCommandLine exit (an unknown flag, a flag without its value, a
// value its type refuses). dragonctl says it its own way and exits 2, the
// code of every usage error.
extern "C" void ABSL_INTERNAL_C_SYMBOL(AbslInternalReportFatalUsageError)(
    absl::string_view message) {
  if (dragon::client::g_absl_stderr == nullptr) return;  // not parsing dragonctl's argv
  const std::string text =
      absl::StrCat("dragonctl: ", dragon::client::RephraseFlagError(message), "\n");
  std::fputs(text.c_str(), stderr);
  std::fflush(stderr);
  std::_Exit(dragon::client::kExitUsage);
}

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "look inside a running dragond, cancel tasks, drain, add and remove nodes.\n\n"
      "usage: dragonctl [FLAGS] COMMAND [ARGS]; 'dragonctl help' lists the commands.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = dragon::client::IsDragonctlFlagFile;
  usage.contains_helpshort_flags = dragon::client::IsDragonctlFlagFile;
  usage.version_string = [] {
    return absl::StrCat("dragonctl ", dragon::client::kVersion, " (protocol ",
                        static_cast<int>(dragon::v1::PROTOCOL_VERSION_CURRENT), ")\n");
  };
  absl::SetFlagsUsageConfig(usage);
  dragon::client::PreparedArgs prepared = dragon::client::PrepareArgs(argc, argv);
  std::vector<std::string> positional = dragon::client::ParseFlags(prepared);
  return dragon::client::Run(positional, prepared.help);
}
