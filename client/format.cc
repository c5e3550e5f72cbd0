#include "client/format.h"

#include <time.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"

namespace dragon::client {
namespace {

using dragon::v1::TaskState;

// The states a user can name, in lifecycle order (also the order of tables).
constexpr std::pair<TaskState, const char*> kStates[] = {
    {dragon::v1::PENDING, "pending"}, {dragon::v1::SCHEDULED, "scheduled"},
    {dragon::v1::RUNNING, "running"}, {dragon::v1::DONE, "done"},
    {dragon::v1::FAILED, "failed"},   {dragon::v1::CANCELLED, "cancelled"},
};

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

// Node membership states in lifecycle order (daemon/membership.h), so that
// counts read in a fixed order; states a newer head adds follow by name.
constexpr const char* kNodeStates[] = {"joining", "ready", "draining", "lost", "gone"};

std::string FormatBytes(uint64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes) / 1024.0;
  int unit = 0;
  while (value >= 1024.0 && unit < 3) {
    value /= 1024.0;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, units[unit]);
}

// "key:" padded to a common width, then the value; continuation lines of a
// multi-line value (e.g. an error with a traceback) are indented under it.
std::string FormatKeyValues(const std::vector<std::pair<std::string, std::string>>& items) {
  size_t width = 0;
  for (const auto& [key, value] : items) width = std::max(width, key.size() + 1);
  std::string out;
  const std::string indent(width + 2, ' ');
  for (const auto& [key, value] : items) {
    std::string label = key + ":";
    label.resize(width, ' ');
    std::vector<absl::string_view> lines = absl::StrSplit(value, '\n');
    while (lines.size() > 1 && lines.back().empty()) lines.pop_back();
    absl::StrAppend(&out, label, "  ", lines[0], "\n");
    for (size_t i = 1; i < lines.size(); ++i) absl::StrAppend(&out, indent, lines[i], "\n");
  }
  return out;
}

// What the AGE/RUNTIME column shows: how long a waiting task has waited, how
// long a running task has run, and how long a finished task ran (or, if it
// never ran, how long it existed).
std::string AgeOrRuntime(const dragon::v1::TaskInfo& task, int64_t now_us) {
  const auto& t = task.times();
  switch (task.state()) {
    case dragon::v1::PENDING:
    case dragon::v1::SCHEDULED:
      return t.submitted_us() ? FormatDuration(now_us - t.submitted_us()) : "-";
    case dragon::v1::RUNNING:
      return t.running_us() ? FormatDuration(now_us - t.running_us()) : "-";
    default:
      if (t.finished_us() == 0) return "-";
      if (t.running_us()) return FormatDuration(t.finished_us() - t.running_us());
      if (t.submitted_us()) return FormatDuration(t.finished_us() - t.submitted_us());
      return "-";
  }
}

}  // namespace

std::string StateName(TaskState state) {
  for (const auto& [value, name] : kStates) {
    if (value == state) return name;
  }
  return absl::AsciiStrToLower(dragon::v1::TaskState_Name(state).empty()
                                   ? absl::StrCat("state_", static_cast<int>(state))
                                   : dragon::v1::TaskState_Name(state));
}

std::optional<TaskState> ParseStateName(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const auto& [value, state_name] : kStates) {
    if (lower == state_name) return value;
  }
  return std::nullopt;
}

std::string AcceptedStateNames() {
  std::vector<std::string> names;
  for (const auto& [value, name] : kStates) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

std::string OutcomeName(dragon::v1::Outcome outcome) {
  switch (outcome) {
    case dragon::v1::OUTCOME_UNSPECIFIED: return "-";
    case dragon::v1::OK: return "ok";
    case dragon::v1::APP_EXCEPTION: return "app exception";
    case dragon::v1::SYSTEM_ERROR: return "system error";
    case dragon::v1::CANCELED: return "cancelled";
    default: return absl::StrCat("outcome ", static_cast<int>(outcome));
  }
}

std::string FailureName(dragon::v1::FailureKind failure) {
  switch (failure) {
    case dragon::v1::FAILURE_KIND_UNSPECIFIED: return "-";
    case dragon::v1::FAILURE_WORKER_LOST: return "worker lost";
    case dragon::v1::FAILURE_NODE_LOST: return "node lost";
    case dragon::v1::FAILURE_CANCELLED: return "cancelled";
    case dragon::v1::FAILURE_TIMED_OUT: return "timed out";
    case dragon::v1::FAILURE_TOO_LARGE: return "too large";
    case dragon::v1::FAILURE_REFUSED: return "refused by the head";
    case dragon::v1::FAILURE_NO_NODES: return "no node left to run it";
    case dragon::v1::FAILURE_WORKER_START: return "workers cannot start";
    case dragon::v1::FAILURE_SHUTDOWN: return "head shut down";
    case dragon::v1::FAILURE_INTERNAL: return "internal error";
    default: return absl::StrCat("failure ", static_cast<int>(failure));
  }
}

std::string FormatBytesShort(uint64_t bytes) {
  std::string text = FormatBytes(bytes);
  text.erase(std::remove(text.begin(), text.end(), ' '), text.end());
  return text;
}

std::string FormatDuration(int64_t micros) {
  // Clocks of different hosts can disagree by a little; never print "-3ms".
  if (micros < 0) micros = 0;
  if (micros < 1000) return absl::StrCat(micros, "us");
  if (micros < 1000 * 1000) return absl::StrFormat("%.1fms", micros / 1e3);
  if (micros < 10LL * 1000 * 1000) return absl::StrFormat("%.2fs", micros / 1e6);
  if (micros < 60LL * 1000 * 1000) return absl::StrFormat("%.1fs", micros / 1e6);
  const int64_t secs = micros / (1000 * 1000);
  if (secs < 3600) return absl::StrFormat("%dm%02ds", secs / 60, secs % 60);
  if (secs < 86400) return absl::StrFormat("%dh%02dm", secs / 3600, (secs % 3600) / 60);
  return absl::StrFormat("%dd%02dh", secs / 86400, (secs % 86400) / 3600);
}

std::string FormatLocalTime(int64_t micros_since_epoch) {
  if (micros_since_epoch == 0) return "-";
  const time_t secs = static_cast<time_t>(micros_since_epoch / 1000000);
  const int millis = static_cast<int>((micros_since_epoch % 1000000) / 1000);
  struct tm local;
  if (localtime_r(&secs, &local) == nullptr) return absl::StrCat(micros_since_epoch, "us");
  char buf[64];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &local);
  const long offset_min = local.tm_gmtoff / 60;
  return absl::StrFormat("%s.%03d%c%02d:%02d", buf, millis, offset_min < 0 ? '-' : '+',
                         std::labs(offset_min) / 60, std::labs(offset_min) % 60);
}

std::string FormatTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i > 0) line += "  ";
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size(), ' ');
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string FormatStatus(const dragon::v1::StatusReply& reply, int64_t now_us) {
  std::string nodes = absl::StrCat(reply.nodes());
  // "nodes: 2 live; by state: 1 ready, 1 draining, 1 lost": `nodes` counts
  // the live ones, nodes_by_state every node the head knows (lost and gone
  // ones included).
  if (!reply.nodes_by_state().empty()) {
    std::map<std::string, uint32_t> by_state(reply.nodes_by_state().begin(),
                                             reply.nodes_by_state().end());
    std::vector<std::string> parts;
    for (const char* state : kNodeStates) {
      auto it = by_state.find(state);
      if (it == by_state.end()) continue;
      if (it->second != 0) parts.push_back(absl::StrCat(it->second, " ", state));
      by_state.erase(it);
    }
    for (const auto& [state, count] : by_state) {
      if (count != 0) parts.push_back(absl::StrCat(count, " ", state));
    }
    if (!parts.empty()) absl::StrAppend(&nodes, " live; by state: ", absl::StrJoin(parts, ", "));
  }
  std::vector<std::pair<std::string, std::string>> items = {
      {"version", absl::StrCat(OrDash(reply.head_version()), " (protocol ",
                               reply.protocol_version(), ")")},
      {"run id", OrDash(reply.run_id())},
      {"address", OrDash(reply.address())},
      {"pid", absl::StrCat(reply.pid())},
      {"started", FormatLocalTime(reply.started_us())},
      {"uptime", reply.started_us() ? FormatDuration(now_us - reply.started_us()) : "-"},
      {"run dir", OrDash(reply.run_dir())},
      {"nodes", nodes},
      {"workers", absl::StrCat(reply.workers())},
      {"sessions", absl::StrCat(reply.sessions())},
      {"auth", reply.auth() ? "on (clients and agents present the run's token)"
                            : "off (dragond --auth none: anyone who reaches the port may use it)"},
      {"tls", reply.tls() ? "on" : "off"},
      {"heartbeat",
       reply.heartbeat_interval_ms() == 0
           ? std::string("-")
           : absl::StrCat("every ", FormatDuration(reply.heartbeat_interval_ms() * 1000LL),
                          ", a node is lost after ",
                          FormatDuration(reply.heartbeat_timeout_ms() * 1000LL), " without one")},
      {"infra retries", absl::StrCat(reply.infra_retries())},
  };
  // The head keys counts by enum name ("PENDING"); fold them onto the names
  // users type, keeping any key this build does not know.
  std::map<std::string, uint64_t> counts;
  uint64_t total = 0;
  for (const auto& [key, count] : reply.tasks_by_state()) {
    counts[absl::AsciiStrToLower(key)] += count;
    total += count;
  }
  // Finished tasks the head dropped under --keep-finished still count in
  // the totals: they ran.
  std::map<std::string, uint64_t> forgotten;
  for (const auto& [key, count] : reply.forgotten_by_state()) {
    forgotten[absl::AsciiStrToLower(key)] += count;
    total += count;
  }
  auto count_text = [&forgotten](const std::string& name, uint64_t count) {
    auto it = forgotten.find(name);
    if (it == forgotten.end() || it->second == 0) return absl::StrCat(count);
    return absl::StrCat(count, " (", it->second, " more forgotten)");
  };
  items.push_back({"tasks", absl::StrCat(total)});
  if (reply.keep_finished() != 0 || !forgotten.empty()) {
    items.push_back({"keep finished",
                     reply.keep_finished() < 0
                         ? std::string("all (--keep-finished -1)")
                         : absl::StrCat("newest ", reply.keep_finished(), " (--keep-finished)")});
  }
  for (const auto& [state, name] : kStates) {
    auto it = counts.find(name);
    items.push_back({absl::StrCat("  ", name),
                     count_text(name, it == counts.end() ? 0 : it->second)});
    if (it != counts.end()) counts.erase(it);
  }
  for (const auto& [name, count] : counts) {
    if (count != 0) items.push_back({absl::StrCat("  ", name), count_text(name, count)});
  }
  return FormatKeyValues(items);
}

std::string FormatNodes(const dragon::v1::ListNodesReply& reply, int64_t now_us) {
  if (reply.nodes().empty()) return "no nodes connected\n";
  // Agents of a Parsl provider's blocks (DragonExecutor(provider=...)) show their block, and
  // when their allocation ends; a run without any keeps the table as it was.
  // Likewise the shared-memory pool (used/capacity) only when some agent has one.
  bool blocks = false, ends = false, pools = false;
  for (const auto& n : reply.nodes()) {
    blocks |= !n.block_id().empty();
    ends |= n.job_end_us() > 0;
    pools |= n.shm_pool_bytes() > 0;
  }
  std::vector<std::string> header = {"NODE", "HOST"};
  if (blocks) header.push_back("BLOCK");
  for (const char* h : {"STATE", "INC", "CORES", "MEM"}) header.push_back(h);
  if (pools) header.push_back("SHM");  // one word: the cells have no spaces either
  for (const char* h : {"GPUS", "WORKERS", "READY", "RUNNING", "QUEUED", "DONE", "HEARTBEAT"}) {
    header.push_back(h);
  }
  if (ends) header.push_back("ENDS IN");
  std::vector<std::vector<std::string>> rows = {header};
  std::string reasons;
  for (const auto& n : reply.nodes()) {
    std::vector<std::string> row = {OrDash(n.node_id()), OrDash(n.host())};
    if (blocks) row.push_back(OrDash(n.block_id()));
    for (std::string cell :
         {OrDash(n.state()), n.incarnation() ? absl::StrCat(n.incarnation()) : "-",
          n.cores() ? absl::StrCat(n.cores()) : "-",
          n.memory_bytes() ? FormatBytesShort(n.memory_bytes()) : "-"}) {
      row.push_back(std::move(cell));
    }
    if (pools) {  // used/capacity
      const uint64_t capacity = n.shm_pool_bytes();
      const uint64_t used = capacity - std::min(capacity, n.shm_pool_free_bytes());
      row.push_back(capacity == 0 ? "-"
                                  : absl::StrCat(FormatBytesShort(used), "/",
                                                 FormatBytesShort(capacity)));
    }
    for (std::string cell :
         {absl::StrCat(n.gpus_size()), absl::StrCat(n.workers()), absl::StrCat(n.ready_workers()),
          absl::StrCat(n.running_tasks()), absl::StrCat(n.queued_tasks()),
          absl::StrCat(n.tasks_done()),
          n.last_heartbeat_us() ? absl::StrCat(FormatDuration(now_us - n.last_heartbeat_us()), " ago")
                                : std::string("-")}) {
      row.push_back(std::move(cell));
    }
    if (ends) {
      row.push_back(n.job_end_us() <= 0          ? "-"
                    : n.job_end_us() <= now_us ? "ended"
                                               : FormatDuration(n.job_end_us() - now_us));
    }
    rows.push_back(std::move(row));
    if (n.state() == "lost" || n.state() == "gone" || !n.lost_reason().empty()) {
      absl::StrAppend(&reasons, "node ", OrDash(n.node_id()), " is ", OrDash(n.state()), ": ",
                      n.lost_reason().empty() ? "no reason given" : n.lost_reason(), "\n");
    }
  }
  std::string out = FormatTable(rows);
  if (!reasons.empty()) absl::StrAppend(&out, "\n", reasons);
  return out;
}

std::string FormatTasks(const dragon::v1::ListTasksReply& reply, int64_t now_us) {
  if (reply.tasks().empty()) return "no tasks\n";
  std::vector<std::vector<std::string>> rows = {
      {"ID", "STATE", "NAME", "NODE", "WORKER", "AGE/RUNTIME"}};
  for (const auto& t : reply.tasks()) {
    rows.push_back({absl::StrCat(t.task_id()), StateName(t.state()), OrDash(t.name()),
                    OrDash(t.node()), t.worker_pid() ? absl::StrCat(t.worker_pid()) : "-",
                    AgeOrRuntime(t, now_us)});
  }
  std::string out = FormatTable(rows);
  if (reply.total_matching() > static_cast<uint64_t>(reply.tasks_size())) {
    absl::StrAppend(&out, "(", reply.tasks_size(), " of ", reply.total_matching(),
                    " matching tasks shown; use --limit N to see more)\n");
  }
  return out;
}

std::string FormatRequest(const dragon::v1::ResourceRequest& r) {
  std::vector<std::string> parts;
  if (r.cores() > 0) parts.push_back(absl::StrCat("cores ", r.cores()));
  if (r.memory_bytes() > 0) parts.push_back(absl::StrCat("memory ", FormatBytes(r.memory_bytes())));
  if (r.gpus() > 0) parts.push_back(absl::StrCat("gpus ", r.gpus()));
  if (r.walltime_s() > 0) parts.push_back(absl::StrCat("walltime ", r.walltime_s(), " s"));
  if (r.priority() != 0) parts.push_back(absl::StrCat("priority ", r.priority()));
  if (r.nodes() > 0) parts.push_back(absl::StrCat("nodes ", r.nodes()));
  if (r.ranks_per_node() > 0) parts.push_back(absl::StrCat("ranks per node ", r.ranks_per_node()));
  if (r.ranks() > 0) parts.push_back(absl::StrCat("ranks ", r.ranks()));
  if (!r.launcher_options().empty()) {
    parts.push_back(absl::StrCat("launcher options '", r.launcher_options(), "'"));
  }
  if (r.hosts_size() > 0) parts.push_back(absl::StrCat("hosts ", absl::StrJoin(r.hosts(), ",")));
  if (r.oversubscribe()) parts.push_back("oversubscribe");
  return parts.empty() ? "-" : absl::StrJoin(parts, ", ");
}

std::string FormatGrant(const dragon::v1::ResourceGrant& g) {
  std::vector<std::string> parts;
  if (g.cpus_size() > 0) parts.push_back(absl::StrCat("cpus ", absl::StrJoin(g.cpus(), ",")));
  if (g.gpus_size() > 0) parts.push_back(absl::StrCat("gpus ", absl::StrJoin(g.gpus(), ",")));
  if (g.memory_bytes() > 0) parts.push_back(absl::StrCat("memory ", FormatBytes(g.memory_bytes())));
  if (g.walltime_s() > 0) parts.push_back(absl::StrCat("walltime ", g.walltime_s(), " s"));
  if (g.has_mpi()) {
    parts.push_back(absl::StrCat("MPI ", g.mpi().ranks(), " rank(s), ", g.mpi().ranks_per_node(),
                                 " per node on ", absl::StrJoin(g.mpi().hosts(), ",")));
  }
  if (g.hold_only()) parts.push_back("hold only");
  return parts.empty() ? "-" : absl::StrJoin(parts, "; ");
}

std::string FormatTask(const dragon::v1::TaskInfo& task, int64_t now_us) {
  const auto& t = task.times();
  std::vector<std::pair<std::string, std::string>> items = {
      {"task", absl::StrCat(task.task_id())},
      {"state", StateName(task.state())},
      {"outcome", OutcomeName(task.outcome())},
      {"name", OrDash(task.name())},
      {"kind", task.kind() == dragon::v1::TASK_KIND_UNSPECIFIED
                   ? "-"
                   : absl::AsciiStrToLower(dragon::v1::TaskKind_Name(task.kind()))},
      {"session", absl::StrCat(task.session_id(), " (client ref ", task.client_ref(), ")")},
      {"node", OrDash(task.node())},
      {"worker pid", task.worker_pid() ? absl::StrCat(task.worker_pid()) : "-"},
      {"payload", FormatBytes(task.payload_bytes())},
  };
  // Why the service could not finish it, and how often it went back to the
  // queue because its node was lost: shown only when there is something to say.
  if (task.failure() != dragon::v1::FAILURE_KIND_UNSPECIFIED) {
    items.insert(items.begin() + 3, {"failure", FailureName(task.failure())});
  }
  // What it asked for and what it got (the leader's share of a gang).
  if (task.has_resources()) items.push_back({"resources", FormatRequest(task.resources())});
  if (task.has_grant()) items.push_back({"grant", FormatGrant(task.grant())});
  if (task.infra_attempts() != 0) {
    items.push_back({"infra attempts",
                     absl::StrCat(task.infra_attempts(), " (run again after its node was lost)")});
  }
  // Each reached transition with the time since the previous reached one,
  // so queueing, waiting for a worker and running time read off directly.
  const std::pair<const char*, int64_t> stamps[] = {{"submitted", t.submitted_us()},
                                                    {"scheduled", t.scheduled_us()},
                                                    {"running", t.running_us()},
                                                    {"finished", t.finished_us()}};
  const char* prev_name = nullptr;
  int64_t prev_us = 0;
  for (const auto& [name, us] : stamps) {
    std::string value = FormatLocalTime(us);
    if (us != 0 && prev_name != nullptr) {
      absl::StrAppend(&value, "  (+", FormatDuration(us - prev_us), " after ", prev_name, ")");
    }
    if (us != 0) {
      prev_name = name;
      prev_us = us;
    }
    items.push_back({name, value});
  }
  const int64_t end_us = t.finished_us() ? t.finished_us() : now_us;
  const char* so_far = t.finished_us() ? "" : " so far";
  if (t.running_us()) {
    items.push_back({"runtime", absl::StrCat(FormatDuration(end_us - t.running_us()), so_far)});
  }
  if (t.submitted_us()) {
    items.push_back({"total", absl::StrCat(FormatDuration(end_us - t.submitted_us()), so_far)});
  }
  if (!task.error().empty()) items.push_back({"error", task.error()});
  return FormatKeyValues(items);
}

std::string FormatCancel(uint64_t task_id, const dragon::v1::CancelReply& reply) {
  if (reply.state() == dragon::v1::CANCELLED &&
      reply.previous_state() != dragon::v1::CANCELLED) {
    return absl::StrCat("task ", task_id, " cancelled (was ", StateName(reply.previous_state()),
                        ")\n");
  }
  if (reply.previous_state() == reply.state()) {
    return absl::StrCat("task ", task_id, " had already ended (", StateName(reply.state()),
                        "); nothing to cancel\n");
  }
  // E.g. the task finished while the head waited for its agent to confirm.
  return absl::StrCat("task ", task_id, " is ", StateName(reply.state()), " (was ",
                      StateName(reply.previous_state()), ")\n");
}

std::string FormatDrain(const dragon::v1::NodeInfo& node, bool drain) {
  const std::string id = OrDash(node.node_id());
  if (drain && node.state() == "draining") {
    return absl::StrCat("node ", id, " is draining: no new tasks are placed on it; its ",
                        node.running_tasks(), " running task(s) finish ('dragonctl nodes undrain ",
                        id, "' resumes)\n");
  }
  if (!drain && node.state() == "ready") {
    return absl::StrCat("node ", id, " is ready: tasks are placed on it again\n");
  }
  // E.g. a node still joining keeps that state; the drain applies once it is ready.
  return absl::StrCat("node ", id, " is ", OrDash(node.state()), " (", drain ? "drain" : "undrain",
                      " requested)\n");
}

std::string FormatAddedNodes(const dragon::v1::AddNodesReply& reply) {
  std::set<std::string> failed;
  for (const std::string& f : reply.failed()) failed.insert(f.substr(0, f.find(": ")));
  std::string out;
  for (const auto& n : reply.nodes()) {
    if (failed.count(n.node_id()) != 0) continue;
    absl::StrAppend(&out, "node ", OrDash(n.node_id()), " is ", OrDash(n.state()), " (host ",
                    OrDash(n.host()), ", incarnation ", n.incarnation(), ", ", n.workers(),
                    " worker(s))\n");
  }
  return out;
}

std::string FormatAddFailures(const dragon::v1::AddNodesReply& reply, size_t asked) {
  if (reply.failed().empty()) return "";
  std::string out;
  for (const std::string& f : reply.failed()) {
    absl::StrAppend(&out, f, f.empty() || f.back() != '\n' ? "\n" : "");
  }
  absl::StrAppend(&out, reply.failed_size(), " of ", std::max<size_t>(asked, reply.failed_size()),
                  " host(s) could not be added\n");
  return out;
}

std::string FormatRemove(const dragon::v1::NodeInfo& node) {
  const std::string id = OrDash(node.node_id());
  if (node.state() == "gone") return absl::StrCat("node ", id, " is gone\n");
  const uint32_t running = node.running_tasks();
  const uint32_t queued = node.queued_tasks();
  if (running == 0 && queued == 0) {
    return absl::StrCat("node ", id, " runs nothing: its agent is told to leave and the node "
                        "will be gone ('dragonctl nodes' shows it)\n");
  }
  std::string out = absl::StrCat("node ", id, " is being removed: no new tasks are placed on it; "
                                 "its ", running, " running task(s) finish");
  if (queued > 0) absl::StrAppend(&out, ", its ", queued, " task(s) not started go back to the queue");
  absl::StrAppend(&out, "; then its agent leaves and the node is gone ('dragonctl nodes' shows it)\n");
  return out;
}

RemovalState DescribeRemoval(const dragon::v1::ListNodesReply& nodes, const std::string& node_id,
                             uint64_t incarnation) {
  for (const auto& n : nodes.nodes()) {
    if (n.node_id() != node_id) continue;
    if (incarnation != 0 && n.incarnation() != incarnation) {
      // ListNodes shows a node's latest incarnation: the one removed has ended.
      return {RemovalState::kGone,
              absl::StrCat("node ", node_id, " incarnation ", incarnation,
                           " has ended; incarnation ", n.incarnation(), " registered since (",
                           OrDash(n.state()), ")")};
    }
    if (n.state() == "gone") {
      return {RemovalState::kGone,
              absl::StrCat("node ", node_id, " is gone",
                           n.lost_reason().empty() ? "" : absl::StrCat(" (", n.lost_reason(), ")"))};
    }
    if (n.state() == "lost") {
      return {RemovalState::kLost,
              absl::StrCat("node ", node_id, " was lost before it left: ",
                           n.lost_reason().empty() ? "no reason given" : n.lost_reason(),
                           " (its running tasks run again elsewhere or fail with NodeLost)")};
    }
    return {RemovalState::kLeaving,
            absl::StrCat("node ", node_id, " is ", OrDash(n.state()), ": ", n.running_tasks(),
                         " running task(s), ", n.queued_tasks(), " not started")};
  }
  return {RemovalState::kLost, absl::StrCat("no node '", node_id, "' in this run any more")};
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  options.add_whitespace = true;
  std::string out;
  auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) {
    // Only possible for a malformed message; still emit valid JSON.
    out = absl::StrCat("{\"error\": \"cannot print ", message.GetTypeName(), " as JSON\"}");
  }
  if (out.empty() || out.back() != '\n') out += '\n';
  return out;
}

}  // namespace dragon::client
