#include "client/top_view.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/format.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace dragon::client {
namespace {

// The head's keys of tasks_by_state are the TaskState names.
constexpr const char* kFinishedStates[] = {"DONE", "FAILED", "CANCELLED"};
constexpr const char* kShownStates[] = {"PENDING", "SCHEDULED", "RUNNING",
                                        "DONE",    "FAILED",    "CANCELLED"};

std::string Lower(const char* state) {
  std::string s = state;
  for (char& c : s) c = static_cast<char>(c - 'A' + 'a');
  return s;
}

uint64_t Count(const google::protobuf::Map<std::string, uint64_t>& counts, const std::string& key) {
  auto it = counts.find(key);
  return it == counts.end() ? 0 : it->second;
}

std::string Fixed(double value, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, value);
  return buf;
}

std::string Rate(const std::optional<double>& per_s) {
  if (!per_s) return "-";
  return *per_s >= 100 ? absl::StrCat(static_cast<uint64_t>(*per_s + 0.5)) : Fixed(*per_s, 1);
}

std::string CpuCell(const dragon::v1::NodeLoad& load) {
  return absl::StrCat(Fixed(load.cpu_busy_permille() / 10.0, 0), "%/", load.cpus());
}

std::string MemCell(const dragon::v1::NodeLoad& load) {
  const uint64_t total = load.mem_total_bytes();
  const uint64_t used = total - std::min(total, load.mem_available_bytes());
  return absl::StrCat(FormatBytesShort(used), "/", FormatBytesShort(total));
}

google::protobuf::Value Number(double v) {
  google::protobuf::Value value;
  value.set_number_value(v);
  return value;
}

google::protobuf::Value NumberOrNull(const std::optional<double>& v) {
  google::protobuf::Value value;
  if (v) {
    value.set_number_value(*v);
  } else {
    value.set_null_value(google::protobuf::NULL_VALUE);
  }
  return value;
}

google::protobuf::Value Text(const std::string& s) {
  google::protobuf::Value value;
  value.set_string_value(s);
  return value;
}

}  // namespace

uint64_t FinishedTasks(const dragon::v1::StatusReply& status) {
  uint64_t finished = 0;
  for (const char* state : kFinishedStates) {
    finished += Count(status.tasks_by_state(), state) + Count(status.forgotten_by_state(), state);
  }
  return finished;
}

TopFrame MakeTopFrame(const TopSample* previous, const TopSample& now) {
  TopFrame frame;
  frame.now = &now;
  frame.finished = FinishedTasks(now.status);
  const bool rates = previous != nullptr && now.at_us > previous->at_us;
  if (rates) {
    frame.interval_s = (now.at_us - previous->at_us) / 1e6;
    // Counters only grow within one head; another head (a restart at the same
    // address) starts again from zero, which is no negative rate.
    const uint64_t before = FinishedTasks(previous->status);
    if (now.status.run_id() == previous->status.run_id()) {
      if (frame.finished >= before) frame.finished_per_s = (frame.finished - before) / frame.interval_s;
      const uint64_t ids = now.status.highest_task_id(), ids_before = previous->status.highest_task_id();
      if (ids >= ids_before) frame.submitted_per_s = (ids - ids_before) / frame.interval_s;
    }
  }
  // The previous sample's count of each node's current incarnation.
  std::map<std::pair<std::string, uint64_t>, uint64_t> done_before;
  if (rates && now.status.run_id() == previous->status.run_id()) {
    for (const auto& n : previous->nodes.nodes()) {
      done_before[{n.node_id(), n.incarnation()}] = n.tasks_done();
    }
  }
  for (const auto& n : now.nodes.nodes()) {
    if (n.state() == "gone") continue;  // left on request: nothing to watch
    TopNode row;
    row.info = &n;
    auto it = done_before.find({n.node_id(), n.incarnation()});
    if (it != done_before.end() && n.tasks_done() >= it->second) {
      row.done_per_s = (n.tasks_done() - it->second) / frame.interval_s;
    }
    frame.nodes.push_back(row);
  }
  return frame;
}

std::string FormatTop(const TopFrame& frame) {
  const TopSample& now = *frame.now;
  const dragon::v1::StatusReply& st = now.status;
  std::string out = absl::StrCat(
      "dragond ", st.address(), "  run ", st.run_id(), "  up ",
      FormatDuration(st.started_us() > 0 ? now.at_us - st.started_us() : 0), "  at ",
      FormatLocalTime(now.at_us), "\n");
  std::vector<std::string> states;
  for (const char* state : kShownStates) {
    states.push_back(absl::StrCat(Count(st.tasks_by_state(), state), " ", Lower(state)));
  }
  absl::StrAppend(&out, "tasks: ", absl::StrJoin(states, ", "), "; ", frame.finished,
                  " finished in all\n");
  absl::StrAppend(&out, "rates: ", Rate(frame.submitted_per_s), " submitted/s, ",
                  Rate(frame.finished_per_s), " finished/s",
                  frame.interval_s > 0 ? absl::StrCat(" (over ", Fixed(frame.interval_s, 1), "s)")
                                       : std::string(" (from the next sample on)"),
                  "\n");
  std::vector<std::string> by_state;
  for (const auto& [state, count] : std::map<std::string, uint32_t>(st.nodes_by_state().begin(),
                                                                    st.nodes_by_state().end())) {
    by_state.push_back(absl::StrCat(count, " ", state));
  }
  absl::StrAppend(&out, "nodes: ", st.nodes(), " live", by_state.empty() ? "" : " (", absl::StrJoin(by_state, ", "),
                  by_state.empty() ? "" : ")", "; ", st.workers(), " workers; ", st.sessions(),
                  " client session(s)\n\n");
  if (frame.nodes.empty()) return out + "no nodes connected\n";
  std::vector<std::vector<std::string>> rows = {{"NODE", "STATE", "CPU", "LOAD", "MEM",
                                                 "WORKERS-RSS", "RUNNING", "QUEUED", "DONE/S",
                                                 "DONE", "SHM", "HEARTBEAT"}};
  for (const TopNode& node : frame.nodes) {
    const dragon::v1::NodeInfo& n = *node.info;
    const bool measured = n.has_load() && n.load().sampled_us() > 0;
    const dragon::v1::NodeLoad& load = n.load();
    const uint64_t capacity = n.shm_pool_bytes();
    const uint64_t pool_used = capacity - std::min(capacity, n.shm_pool_free_bytes());
    rows.push_back({
        n.node_id().empty() ? "-" : n.node_id(),
        n.state().empty() ? "-" : n.state(),
        measured ? CpuCell(load) : "-",
        measured ? Fixed(load.load1(), 2) : "-",
        measured && load.mem_total_bytes() > 0 ? MemCell(load) : "-",
        measured ? FormatBytesShort(load.workers_rss_bytes()) : "-",
        absl::StrCat(n.running_tasks()),
        absl::StrCat(n.queued_tasks()),
        Rate(node.done_per_s),
        absl::StrCat(n.tasks_done()),
        capacity == 0 ? "-" : absl::StrCat(FormatBytesShort(pool_used), "/", FormatBytesShort(capacity)),
        n.last_heartbeat_us() ? absl::StrCat(FormatDuration(now.at_us - n.last_heartbeat_us()), " ago")
                              : "-",
    });
  }
  absl::StrAppend(&out, FormatTable(rows));
  absl::StrAppend(&out, "\nCPU: the host's busy share / its CPUs; MEM: used (total - available) / total; "
                        "WORKERS-RSS: the resident memory of what the agent runs (its Python workers; "
                        "with executables or MPI jobs, all it started)\n");
  return out;
}

std::string TopJson(const TopFrame& frame) {
  const TopSample& now = *frame.now;
  google::protobuf::Struct root;
  auto& f = *root.mutable_fields();
  f["time_us"] = Number(static_cast<double>(now.at_us));
  f["run_id"] = Text(now.status.run_id());
  f["address"] = Text(now.status.address());
  f["interval_s"] = Number(frame.interval_s);
  google::protobuf::Value tasks;
  for (const char* state : kShownStates) {
    (*tasks.mutable_struct_value()->mutable_fields())[state] =
        Number(static_cast<double>(Count(now.status.tasks_by_state(), state)));
  }
  f["tasks_by_state"] = tasks;
  f["finished"] = Number(static_cast<double>(frame.finished));
  f["submitted_per_s"] = NumberOrNull(frame.submitted_per_s);
  f["finished_per_s"] = NumberOrNull(frame.finished_per_s);
  google::protobuf::Value nodes;
  auto* list = nodes.mutable_list_value();
  for (const TopNode& node : frame.nodes) {
    const dragon::v1::NodeInfo& n = *node.info;
    google::protobuf::Value v;
    auto& g = *v.mutable_struct_value()->mutable_fields();
    g["node_id"] = Text(n.node_id());
    g["state"] = Text(n.state());
    g["running"] = Number(n.running_tasks());
    g["queued"] = Number(n.queued_tasks());
    g["tasks_done"] = Number(static_cast<double>(n.tasks_done()));
    g["done_per_s"] = NumberOrNull(node.done_per_s);
    const bool measured = n.has_load() && n.load().sampled_us() > 0;
    const dragon::v1::NodeLoad& load = n.load();
    g["cpu_busy_percent"] =
        NumberOrNull(measured ? std::optional<double>(load.cpu_busy_permille() / 10.0) : std::nullopt);
    g["cpus"] = NumberOrNull(measured ? std::optional<double>(load.cpus()) : std::nullopt);
    g["load1"] = NumberOrNull(measured ? std::optional<double>(load.load1()) : std::nullopt);
    g["mem_total_bytes"] =
        NumberOrNull(measured ? std::optional<double>(load.mem_total_bytes()) : std::nullopt);
    g["mem_available_bytes"] =
        NumberOrNull(measured ? std::optional<double>(load.mem_available_bytes()) : std::nullopt);
    g["workers_rss_bytes"] =
        NumberOrNull(measured ? std::optional<double>(load.workers_rss_bytes()) : std::nullopt);
    *list->add_values() = std::move(v);
  }
  f["nodes"] = nodes;
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  (void)google::protobuf::util::MessageToJsonString(root, &json, options);
  return json + "\n";
}

}  // namespace dragon::client
