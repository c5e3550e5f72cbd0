#include "client/dragonctl_help.h"

#include <algorithm>
#include <utility>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/dragonctl_flags.h"
#include "client/format.h"

namespace dragon::client {
namespace {

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
     "WORKERS-RSS the resident memory of what the node's agent runs (its Python\n"
     "workers; while executables or MPI jobs run, every process it started), as\n"
     "measured at its last heartbeat (about a second apart); DONE/S is the\n"
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

}  // namespace

bool IsDragonctlFlagFile(absl::string_view file) {
  return absl::StrContains(file, "client/dragonctl.cc");
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

}  // namespace dragon::client
