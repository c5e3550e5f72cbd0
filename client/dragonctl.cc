// dragonctl: look inside a running dragond (status, nodes, ps, show), cancel
// tasks, drain nodes, add nodes (ssh launcher) and remove them. Finds the head and its token like every other
// component does (common/head_locator.h) and talks to it through HeadClient.
//
// Command line: `dragonctl [FLAGS] COMMAND [ARGS]`, flags before or after the
// command. Flags are absl flags (the ABSL_FLAGs below, parsed by
// absl::ParseCommandLine, --run-dir and --run_dir alike); the command and
// its arguments are the positional arguments absl leaves.
//
// Exit codes: 0 ok; 1 the head could not be found or reached, or refused the
// request; 2 the command line is wrong (nothing was sent). absl itself exits
// 1 on a flag it cannot parse; its documented hook for fatal usage errors
// (absl/flags/usage_config.h) is used below to say so in dragonctl's words
// and exit 2 instead.

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/dragonctl_flags.h"
#include "client/format.h"
#include "client/head_client.h"
#include "client/logs_format.h"
#include "client/top_command.h"
#include "common/head_locator.h"

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

constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

// While absl parses the command line: what it writes to std::cerr (its
// "ERROR: ..." lines, replaced by dragonctl's own message). Null otherwise.
std::ostringstream* g_absl_stderr = nullptr;

bool IsDragonctlFlagFile(absl::string_view file) {
  return absl::StrContains(file, "client/dragonctl.cc");
}

// More forms of a command, each its own line in the synopsis.
struct Form {
  const char* args;
  const char* summary;
};

struct Command {
  const char* name;
  const char* args;  // positional arguments, for the synopsis
  const char* summary;
  const char* details;
  bool takes_task;  // exactly one TASK argument
  std::vector<Form> more = {};
};

const std::vector<Command> kCommands = {
    {"status", "", "show the head: address, uptime, auth, heartbeats, nodes, workers, tasks",
     "Shows the head's version, run id, address, pid, start time and uptime, run\n"
     "directory, the number of live nodes (and every node by state: joining, ready,\n"
     "draining, lost, gone), workers and client sessions, whether clients must\n"
     "present the run's token (auth) and TLS is on, the heartbeat interval and\n"
     "after how long without one a node is lost, how often a task whose node is\n"
     "lost is run again (infra retries), and how many tasks are in each state.\n",
     false},
    {"nodes", "[drain NODE | undrain NODE]", "list the nodes, or stop/resume placing tasks on one",
     "'dragonctl nodes' lists the nodes (one agent each), one row per node:\n"
     "  NODE HOST STATE INC CORES MEM SHM GPUS WORKERS READY RUNNING QUEUED DONE HEARTBEAT\n"
     "SHM is the agent's shared-memory pool for task data, used/capacity\n"
     "(dragon-agent --shm-pool-mb; shown when some node has one). STATE is joining (registered, first heartbeat not yet answered), ready,\n"
     "draining (no new tasks), lost (heartbeats stopped) or gone (left); INC is the\n"
     "incarnation (1 for the node's first agent, +1 each time it registers again);\n"
     "READY counts workers ready to run a task, RUNNING the tasks running there,\n"
     "QUEUED the tasks sent to the node and not started; HEARTBEAT is the time\n"
     "since the node's agent last answered. Under the table, a line per lost or\n"
     "gone node says why.\n"
     "\n"
     "'dragonctl nodes drain NODE' stops placing tasks on NODE: its running tasks\n"
     "finish, the tasks sent to it and not started go back to the queue.\n"
     "'dragonctl nodes undrain NODE' places tasks on it again. Both print the\n"
     "node's new state; an unknown NODE is an error (exit 1).\n"
     "\n"
     "'dragonctl nodes add HOST...' starts an agent on each HOST (hosts may also be\n"
     "given as h1,h2) through the head's launcher (dragond --launcher ssh) and waits\n"
     "until each is ready or has failed (the head waits up to 60 s, so this call\n"
     "may take --timeout plus 60 s). It prints each added node's state, and each\n"
     "host that could not be added as 'HOST: why' on stderr (exit 1 if any).\n"
     "'dragonctl nodes remove NODE' drains NODE and has its agent leave once its\n"
     "running tasks end: they finish, the tasks sent to it and not started go back\n"
     "to the queue, and the node ends 'gone'. With --wait it waits for that,\n"
     "saying every 5 s what NODE still runs; exit 1 if NODE is lost meanwhile.\n",
     false,
     {{"add HOST...", "start agents on more hosts (dragond --launcher ssh)"},
      {"remove NODE [--wait]", "drain NODE, then have its agent leave (it ends 'gone')"}}},
    {"ps", "[--state STATE] [--limit N]", "list tasks",
     "Columns: ID STATE NAME NODE WORKER AGE/RUNTIME. AGE/RUNTIME is how long a\n"
     "pending or scheduled task has waited, how long a running task has run, and\n"
     "how long a finished task ran.\n"
     "  --state STATE   only tasks in STATE, one of\n"
     "                  pending, scheduled, running, done, failed, cancelled\n"
     "  --limit N       at most N tasks (0 = the head's default, 1000)\n",
     false},
    {"show", "TASK", "show one task: node, worker, state times, failure, error",
     "Shows task TASK (an ID from 'dragonctl ps'): state, outcome, why the service\n"
     "could not finish it (failure: worker lost, node lost, timed out, ...), name,\n"
     "node, worker pid, each state transition as local time with the time since the\n"
     "previous one, runtime, how often it was run again because its node was lost\n"
     "(infra attempts), and the error if there is one.\n",
     true},
    {"cancel", "TASK", "cancel a task that has not finished",
     "Cancels task TASK. A pending task is dropped; a running task's worker is\n"
     "killed (and replaced) and the task ends CANCELLED. Cancelling a task that\n"
     "already ended changes nothing and says so.\n",
     true},
    {"logs", "TASK [--rank R] [--bytes N]", "show a task's output",
     "Shows what task TASK wrote, as the agent that ran it keeps it: for an MPI\n"
     "job (@mpi_app) every rank's stdout and stderr files and the launcher's log\n"
     "(--rank R: rank R's only), for an executable its captured stdout and\n"
     "stderr, for a Python task what its worker wrote to its log while it ran the\n"
     "task. Each file comes under a header naming rank, stream, host, path and\n"
     "size; --bytes N shows the last N bytes of each (default 1 MiB). A task whose\n"
     "node is gone cannot be read (the error names the host and where it was).\n",
     true},
    {"top", "[--interval SECS] [--iterations N]", "watch tasks and nodes live: rates, CPU, memory",
     "Polls the head every --interval seconds (default 2) and shows, until Ctrl-C\n"
     "or --iterations samples: the tasks by state and how many were submitted and\n"
     "finished per second since the previous sample, then a row per node:\n"
     "  NODE STATE CPU LOAD MEM WORKERS-RSS RUNNING QUEUED DONE/S DONE SHM HEARTBEAT\n"
     "CPU is the share of the host's CPU time that was busy (and its CPU count), LOAD\n"
     "its 1-minute load average, MEM used/total memory (total minus available),\n"
     "WORKERS-RSS the resident memory of the node's Python workers, as its agent\n"
     "measured them at its last heartbeat (about a second apart); DONE/S is the\n"
     "tasks the node finished per second. On a terminal each sample replaces the\n"
     "last; otherwise (a file, a pipe) they follow each other. With --json, one JSON\n"
     "object per sample and line (rates null where the text shows '-').\n"
     "Exits 0 after --iterations samples or Ctrl-C, 1 when the head stops answering.\n",
     false},
    {"help", "[COMMAND]", "show this help, or the help of COMMAND", "", false},
};

// How each flag is shown in the help, in this order; the description is the
// flag's own help text (one place for both --help and absl's --helpfull).
struct FlagDisplay {
  const char* name;  // absl's name
  const char* value;  // placeholder for its value; "" for a boolean
};
const FlagDisplay kFlagDisplay[] = {
    {"head", "HOST:PORT"}, {"run_dir", "DIR"}, {"token_file", "FILE"}, {"tls_ca", "FILE"},
    {"json", ""},          {"timeout", "SECS"}, {"state", "STATE"},    {"limit", "N"},
    {"wait", ""},          {"rank", "R"},       {"bytes", "N"},        {"interval", "SECS"},
    {"iterations", "N"},
};

// `text` wrapped to lines of at most `width` characters, each after `indent`.
std::string Wrap(const std::string& text, size_t indent, size_t width) {
  std::string out, line;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!line.empty() && indent + line.size() + 1 + word.size() > width) {
      absl::StrAppend(&out, line, "\n", std::string(indent, ' '));
      line.clear();
    }
    absl::StrAppend(&line, line.empty() ? "" : " ", word);
  }
  return out + line;
}

std::string FlagsHelp() {
  constexpr size_t kIndent = 22;
  std::vector<std::pair<std::string, std::string>> rows;
  std::vector<std::string> shown;
  auto add = [&rows, &shown](const absl::CommandLineFlag& flag, absl::string_view value) {
    std::string left =
        absl::StrCat("  ", DisplayFlag(flag.Name()), value.empty() ? "" : " ", value);
    std::string help = flag.Help();
    // Defaults that say something (not "" or an unset filter).
    const std::string def = flag.DefaultValue();
    if (!def.empty() && def != "false") absl::StrAppend(&help, " (default ", def, ")");
    rows.emplace_back(std::move(left), std::move(help));
    shown.emplace_back(flag.Name());
  };
  for (const FlagDisplay& d : kFlagDisplay) {
    if (const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(d.name)) add(*flag, d.value);
  }
  // A flag defined here and missing from kFlagDisplay is still listed.
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsDragonctlFlagFile(flag->Filename()) &&
        std::find(shown.begin(), shown.end(), std::string(name)) == shown.end()) {
      add(*flag, "VALUE");
    }
  }
  rows.emplace_back("  -h, --help", "show help (also 'dragonctl help [COMMAND]')");
  std::string out =
      "Flags (before or after the command; --run-dir and --run_dir both work):\n";
  for (auto& [left, help] : rows) {
    if (left.size() + 2 > kIndent) {
      absl::StrAppend(&out, left, "\n", std::string(kIndent, ' '));
    } else {
      absl::StrAppend(&out, left, std::string(kIndent - left.size(), ' '));
    }
    absl::StrAppend(&out, Wrap(help, kIndent, 79), "\n");
  }
  return out;
}

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
      "usage: dragonctl [--head HOST:PORT] [--run-dir DIR] [--token-file FILE] [--tls-ca FILE]\n"
      "                 [--json] [--timeout SECS] COMMAND [ARGS]\n\n"
      "Look inside a running dragond, cancel tasks, drain, add and remove nodes.\n\n"
      "Commands:\n";
  std::vector<std::vector<std::string>> rows;
  for (const Command& c : kCommands) {
    rows.push_back({absl::StrCat("  ", c.name, *c.args ? " " : "", c.args), c.summary});
    for (const Form& f : c.more) rows.push_back({absl::StrCat("  ", c.name, " ", f.args), f.summary});
  }
  absl::StrAppend(&out, FormatTable(rows));
  absl::StrAppend(&out, "\n", FlagsHelp(),
                  "\nEvery request carries the run's token; a head that refuses it says where\n"
                  "tokens are read from, and dragonctl says which one it sent.\n"
                  "\nExit codes: 0 ok, 1 the head is not reachable or refused, 2 bad usage.\n"
                  "'dragonctl help COMMAND' shows the details of one command.\n");
  return out;
}

std::string CommandHelp(const Command& c) {
  std::string more;
  for (const Form& f : c.more) absl::StrAppend(&more, "       dragonctl [FLAGS] ", c.name, " ", f.args, "\n");
  return absl::StrCat("usage: dragonctl [FLAGS] ", c.name, *c.args ? " " : "", c.args, "\n", more, "\n",
                      absl::AsciiStrToUpper(std::string(c.summary, 1)), c.summary + 1, ".\n\n",
                      c.details, *c.details ? "\n" : "", FlagsHelp());
}

int Usage(const std::string& message) {
  std::cerr << "dragonctl: " << message << "\n";
  return kExitUsage;
}

int Fail(const absl::Status& status) {
  std::cerr << "dragonctl: " << status.message() << "\n";
  return kExitError;
}

// `nodes remove NODE --wait`: polls ListNodes until NODE (the incarnation
// RemoveNode answered for) is gone (exit 0) or lost (exit 1), saying every
// 5 s on stderr what it still runs. A head that stops answering ends the
// wait (exit 1) after --timeout, like any call.
int WaitUntilGone(HeadClient& head, const std::string& node_id, uint64_t incarnation, bool json) {
  const absl::Time start = absl::Now();
  absl::Time next_report = start + absl::Seconds(5);
  while (true) {
    absl::StatusOr<dragon::v1::ListNodesReply> nodes = head.ListNodes();
    if (!nodes.ok()) return Fail(nodes.status());
    const RemovalState where = DescribeRemoval(*nodes, node_id, incarnation);
    const std::string took =
        FormatDuration(absl::ToInt64Microseconds(absl::Now() - start));
    if (where.kind == RemovalState::kGone) {
      if (!json) std::cout << where.text << " after " << took << "\n";
      std::cout.flush();
      return std::cout.good() ? kExitOk : kExitError;
    }
    if (where.kind == RemovalState::kLost) {
      std::cerr << "dragonctl: " << where.text << "\n";
      return kExitError;
    }
    if (absl::Now() >= next_report) {
      std::cerr << "dragonctl: waiting " << took << " so far; " << where.text << "\n";
      next_report = absl::Now() + absl::Seconds(5);
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

// `dragonctl top`: samples of `head` until the count, Ctrl-C (exit 0) or a failing call (exit 1).
int Top(HeadClient& head, absl::Duration interval, uint64_t iterations, bool json) {
  TopOptions options;
  options.interval = interval;
  options.iterations = iterations;
  options.json = json;
  options.redraw = !json && isatty(STDOUT_FILENO);
  const absl::Status done = RunTop(options, HeadTopSource(&head), std::cout);
  return done.ok() ? kExitOk : Fail(done);
}

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
  HeadClient& head = **client;

  const bool json = absl::GetFlag(FLAGS_json);
  auto now_us = [] { return absl::ToUnixMicros(absl::Now()); };
  // Prints the reply as JSON or through `text`, or reports the failure.
  auto emit = [&](const auto& reply, auto text) -> int {
    if (!reply.ok()) return Fail(reply.status());
    std::cout << (json ? ToJson(*reply) : text(*reply));
    std::cout.flush();
    return std::cout.good() ? kExitOk : kExitError;
  };

  if (name == "status") {
    return emit(head.Status(), [&](const auto& r) { return FormatStatus(r, now_us()); });
  }
  if (name == "nodes" && !add_hosts.empty()) {
    absl::StatusOr<dragon::v1::AddNodesReply> added = head.AddNodes(add_hosts);
    if (!added.ok()) return Fail(added.status());
    std::cout << (json ? ToJson(*added) : FormatAddedNodes(*added));
    std::cout.flush();
    const std::string failures = FormatAddFailures(*added, add_hosts.size());
    for (absl::string_view line : absl::StrSplit(failures, '\n', absl::SkipEmpty())) {
      std::cerr << "dragonctl: " << line << "\n";
    }
    return !failures.empty() || !std::cout.good() ? kExitError : kExitOk;
  }
  if (name == "nodes" && remove) {
    absl::StatusOr<dragon::v1::NodeInfo> removing = head.RemoveNode(node_id);
    if (!removing.ok()) return Fail(removing.status());
    std::cout << (json ? ToJson(*removing) : FormatRemove(*removing));
    std::cout.flush();
    if (!wait) return std::cout.good() ? kExitOk : kExitError;
    return WaitUntilGone(head, node_id, removing->incarnation(), json);
  }
  if (name == "nodes" && drain) {
    return emit(head.DrainNode(node_id, *drain),
                [&](const auto& r) { return FormatDrain(r, *drain); });
  }
  if (name == "nodes") {
    return emit(head.ListNodes(), [&](const auto& r) { return FormatNodes(r, now_us()); });
  }
  if (name == "ps") {
    return emit(head.ListTasks(state.value_or(dragon::v1::TASK_STATE_UNSPECIFIED),
                               limit.value_or(0)),
                [&](const auto& r) { return FormatTasks(r, now_us()); });
  }
  if (name == "show") {
    return emit(head.GetTask(task_id), [&](const auto& r) { return FormatTask(r, now_us()); });
  }
  if (name == "logs") {
    return emit(head.TaskLogs(task_id, rank_flag >= 0 ? std::optional<int32_t>(rank_flag) : std::nullopt,
                              static_cast<uint64_t>(bytes_flag)),
                [](const auto& r) { return FormatLogs(r); });
  }
  if (name == "cancel") {
    return emit(head.Cancel(task_id), [&](const auto& r) { return FormatCancel(task_id, r); });
  }
  if (name == "top") return Top(head, interval, static_cast<uint64_t>(iterations), json);
  // Every entry of kCommands is handled above.
  return Usage(absl::StrCat("command '", name, "' is not implemented"));
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
