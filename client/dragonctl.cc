// dragonctl: look inside a running dragond (status, nodes, ps, show) and
// cancel tasks. Finds the head like every other component does
// (common/head_locator.h) and talks to it through HeadClient.
//
// Exit codes: 0 ok; 1 the head could not be found or reached, or refused the
// request; 2 the command line is wrong (nothing was sent).

#include <cstdint>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/format.h"
#include "client/head_client.h"
#include "common/head_locator.h"

namespace dragon::client {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

struct Command {
  const char* name;
  const char* args;  // positional arguments, for the synopsis
  const char* summary;
  const char* details;
  bool takes_task;  // exactly one TASK argument
};

const Command kCommands[] = {
    {"status", "", "show the head: version, run, address, uptime, nodes, workers, task counts",
     "Shows the head's version, run id, address, pid, start time and uptime, run\n"
     "directory, the number of nodes, workers and client sessions, and how many\n"
     "tasks are in each state.\n",
     false},
    {"nodes", "", "list the nodes (one agent each) with their workers and load",
     "Columns: NODE HOST WORKERS BUSY ASSIGNED DONE STATE HEARTBEAT.\n"
     "ASSIGNED counts tasks sent to the node and not finished; HEARTBEAT is the\n"
     "time since the node's agent last reported.\n",
     false},
    {"ps", "[--state STATE] [--limit N]", "list tasks",
     "Columns: ID STATE NAME NODE WORKER AGE/RUNTIME. AGE/RUNTIME is how long a\n"
     "pending or scheduled task has waited, how long a running task has run, and\n"
     "how long a finished task ran.\n"
     "  --state STATE   only tasks in STATE, one of\n"
     "                  pending, scheduled, running, done, failed, cancelled\n"
     "  --limit N       at most N tasks (0 = the head's default, 1000)\n",
     false},
    {"show", "TASK", "show one task: node, worker, state times, error",
     "Shows task TASK (an ID from 'dragonctl ps'): state, outcome, name, node,\n"
     "worker pid, each state transition as local time with the time since the\n"
     "previous one, runtime, and the error if there is one.\n",
     true},
    {"cancel", "TASK", "cancel a task that has not finished",
     "Cancels task TASK. A pending task is dropped; a running task's worker is\n"
     "killed (and replaced) and the task ends CANCELLED. Cancelling a task that\n"
     "already ended changes nothing and says so.\n",
     true},
    {"help", "[COMMAND]", "show this help, or the help of COMMAND", "", false},
};

const char kGlobalFlags[] =
    "Flags (before or after the command):\n"
    "  --head HOST:PORT  the head to talk to (default: $DRAGON_HEAD, then the\n"
    "                    head.json of --run-dir, then $DRAGON_HOME/current/head.json;\n"
    "                    DRAGON_HOME defaults to ~/.dragon)\n"
    "  --run-dir DIR     use the head of the run in DIR (DIR/head.json)\n"
    "  --json            print the head's reply as JSON (protobuf field names,\n"
    "                    every field present)\n"
    "  --timeout SECS    give up on the head after SECS seconds (default 10)\n"
    "  -h, --help        show help\n";

const Command* FindCommand(const std::string& name) {
  for (const Command& c : kCommands) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

std::string CommandNames() {
  std::vector<std::string> names;
  for (const Command& c : kCommands) names.push_back(c.name);
  return absl::StrJoin(names, ", ");
}

std::string GeneralHelp() {
  std::string out =
      "usage: dragonctl [--head HOST:PORT] [--run-dir DIR] [--json] [--timeout SECS] "
      "COMMAND [ARGS]\n\n"
      "Look inside a running dragond and cancel tasks.\n\nCommands:\n";
  std::vector<std::vector<std::string>> rows;
  for (const Command& c : kCommands) {
    rows.push_back({absl::StrCat("  ", c.name, *c.args ? " " : "", c.args), c.summary});
  }
  absl::StrAppend(&out, FormatTable(rows));
  absl::StrAppend(&out, "\n", kGlobalFlags,
                  "\nExit codes: 0 ok, 1 the head is not reachable or refused, 2 bad usage.\n"
                  "'dragonctl help COMMAND' shows the details of one command.\n");
  return out;
}

std::string CommandHelp(const Command& c) {
  return absl::StrCat("usage: dragonctl [FLAGS] ", c.name, *c.args ? " " : "", c.args, "\n\n",
                      absl::AsciiStrToUpper(std::string(c.summary, 1)), c.summary + 1, ".\n\n",
                      c.details, *c.details ? "\n" : "", kGlobalFlags);
}

struct Options {
  std::string head;
  std::string run_dir;
  bool json = false;
  absl::Duration timeout = kDefaultTimeout;
  bool help = false;
  std::optional<dragon::v1::TaskState> state;
  std::optional<uint32_t> limit;
  std::vector<std::string> positional;
};

// A usage error: the message for stderr (without the "dragonctl: " prefix).
struct UsageError {
  std::string message;
};

std::optional<UsageError> ParseArgs(int argc, char** argv, Options* opts) {
  bool only_positional = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    // "-5" is a (bad) task id, not a flag: let ParseTaskId explain it.
    const bool negative_number = arg.size() > 1 && arg[0] == '-' && absl::ascii_isdigit(arg[1]);
    if (only_positional || arg.empty() || arg[0] != '-' || arg == "-" || negative_number) {
      opts->positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      only_positional = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      opts->help = true;
      continue;
    }
    if (arg == "--json") {
      opts->json = true;
      continue;
    }
    // Flags with a value: "--name value" or "--name=value".
    std::string name = arg, value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    if (name != "--head" && name != "--run-dir" && name != "--timeout" && name != "--state" &&
        name != "--limit") {
      return UsageError{absl::StrCat("unknown flag '", arg, "' (see 'dragonctl --help')")};
    }
    if (!has_value) {
      if (i + 1 >= argc) return UsageError{absl::StrCat(name, " needs a value")};
      value = argv[++i];
    }
    if (name == "--head") {
      absl::Status valid = common::ValidateHostPort(value, "--head");
      if (!valid.ok()) return UsageError{std::string(valid.message())};
      opts->head = value;
    } else if (name == "--run-dir") {
      if (value.empty()) return UsageError{"--run-dir needs a directory"};
      opts->run_dir = value;
    } else if (name == "--timeout") {
      double secs = 0;
      if (!absl::SimpleAtod(value, &secs) || !(secs > 0) || secs > 86400) {
        return UsageError{absl::StrCat("bad --timeout '", value,
                                       "': expected a number of seconds > 0")};
      }
      opts->timeout = absl::Seconds(secs);
    } else if (name == "--state") {
      opts->state = ParseStateName(value);
      if (!opts->state) {
        return UsageError{absl::StrCat("unknown state '", value, "' for --state; accepted: ",
                                       AcceptedStateNames())};
      }
    } else if (name == "--limit") {
      uint32_t limit = 0;
      const bool digits = !value.empty() && value.find_first_not_of("0123456789") == std::string::npos;
      if (!digits || !absl::SimpleAtoi(value, &limit)) {
        return UsageError{absl::StrCat("bad --limit '", value,
                                       "': expected a whole number >= 0 (0 = the head's default)")};
      }
      opts->limit = limit;
    }
  }
  return std::nullopt;
}

std::optional<UsageError> ParseTaskId(const std::string& text, uint64_t* id) {
  const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  if (!digits || !absl::SimpleAtoi(text, id) || *id == 0) {
    return UsageError{absl::StrCat("bad task id '", text,
                                   "': expected a positive whole number (the ID column of "
                                   "'dragonctl ps')")};
  }
  return std::nullopt;
}

int Usage(const UsageError& error) {
  std::cerr << "dragonctl: " << error.message << "\n";
  return kExitUsage;
}

int Fail(const absl::Status& status) {
  std::cerr << "dragonctl: " << status.message() << "\n";
  return kExitError;
}

int Run(int argc, char** argv) {
  Options opts;
  if (auto err = ParseArgs(argc, argv, &opts)) return Usage(*err);

  if (opts.positional.empty()) {
    if (opts.help) {
      std::cout << GeneralHelp();
      return kExitOk;
    }
    std::cerr << GeneralHelp();
    return Usage({"no command given"});
  }
  const std::string& name = opts.positional[0];
  const Command* command = FindCommand(name);
  if (command == nullptr) {
    return Usage({absl::StrCat("unknown command '", name, "'; commands: ", CommandNames())});
  }
  std::vector<std::string> args(opts.positional.begin() + 1, opts.positional.end());

  if (name == "help") {
    if (args.empty()) {
      std::cout << GeneralHelp();
      return kExitOk;
    }
    const Command* about = FindCommand(args[0]);
    if (about == nullptr || args.size() > 1) {
      return Usage({absl::StrCat("unknown command '", absl::StrJoin(args, " "),
                                 "' for help; commands: ", CommandNames())});
    }
    std::cout << (about->name == std::string("help") ? GeneralHelp() : CommandHelp(*about));
    return kExitOk;
  }
  if (opts.help) {
    std::cout << CommandHelp(*command);
    return kExitOk;
  }

  // Everything the command line can get wrong is checked before any RPC.
  if (name != "ps" && (opts.state || opts.limit)) {
    return Usage({absl::StrCat(opts.state ? "--state" : "--limit", " is a flag of 'ps', not of '",
                               name, "'")});
  }
  uint64_t task_id = 0;
  if (command->takes_task) {
    if (args.size() != 1) {
      return Usage({absl::StrCat("'", name, "' takes one task id, got ", args.size(),
                                 " arguments (usage: dragonctl ", name, " TASK)")});
    }
    if (auto err = ParseTaskId(args[0], &task_id)) return Usage(*err);
  } else if (!args.empty()) {
    return Usage({absl::StrCat("'", name, "' takes no arguments, got '",
                               absl::StrJoin(args, " "), "'")});
  }

  absl::StatusOr<common::HeadLocation> location =
      common::LocateHead({opts.head, opts.run_dir});
  if (!location.ok()) return Fail(location.status());
  absl::StatusOr<std::unique_ptr<HeadClient>> client =
      HeadClient::Create(location->address, opts.timeout);
  if (!client.ok()) return Fail(client.status());
  HeadClient& head = **client;

  auto now_us = [] { return absl::ToUnixMicros(absl::Now()); };
  // Prints the reply as JSON or through `text`, or reports the failure.
  auto emit = [&](const auto& reply, auto text) -> int {
    if (!reply.ok()) return Fail(reply.status());
    std::cout << (opts.json ? ToJson(*reply) : text(*reply));
    std::cout.flush();
    return std::cout.good() ? kExitOk : kExitError;
  };

  if (name == "status") {
    return emit(head.Status(), [&](const auto& r) { return FormatStatus(r, now_us()); });
  }
  if (name == "nodes") {
    return emit(head.ListNodes(), [&](const auto& r) { return FormatNodes(r, now_us()); });
  }
  if (name == "ps") {
    return emit(head.ListTasks(opts.state.value_or(dragon::v1::TASK_STATE_UNSPECIFIED),
                               opts.limit.value_or(0)),
                [&](const auto& r) { return FormatTasks(r, now_us()); });
  }
  if (name == "show") {
    return emit(head.GetTask(task_id), [&](const auto& r) { return FormatTask(r, now_us()); });
  }
  if (name == "cancel") {
    return emit(head.Cancel(task_id), [&](const auto& r) { return FormatCancel(task_id, r); });
  }
  // Every entry of kCommands is handled above.
  return Usage({absl::StrCat("command '", name, "' is not implemented")});
}

}  // namespace
}  // namespace dragon::client

int main(int argc, char** argv) { return dragon::client::Run(argc, argv); }
