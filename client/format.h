// How dragonctl shows HeadService replies: aligned tables and key: value
// lines for people, protobuf JSON for scripts. Pure functions of the reply
// and the current time, so that they can be tested on fixed inputs.
#ifndef DRAGON_CLIENT_FORMAT_H_
#define DRAGON_CLIENT_FORMAT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "proto/head.pb.h"

namespace dragon::client {

// Lower-case state name as users type it ("pending", ..., "cancelled").
std::string StateName(dragon::v1::TaskState state);
// The inverse of StateName, case-insensitive; nullopt for anything else.
std::optional<dragon::v1::TaskState> ParseStateName(absl::string_view name);
// "pending, scheduled, running, done, failed, cancelled".
std::string AcceptedStateNames();

std::string OutcomeName(dragon::v1::Outcome outcome);
// Why a task did not end with a value, for people: "node lost", "timed out", ...;
// "-" for FAILURE_KIND_UNSPECIFIED.
std::string FailureName(dragon::v1::FailureKind failure);

// A byte count without spaces, for table cells: "512B", "1.5KiB", "15.6GiB".
std::string FormatBytesShort(uint64_t bytes);

// A duration for people: "850us", "12.3ms", "4.25s", "3m07s", "2h05m", "3d04h".
std::string FormatDuration(int64_t micros);
// Local ISO-8601 time with milliseconds and offset, "2026-01-02T15:04:05.123+01:00";
// "-" for 0 (the proto's "not reached").
std::string FormatLocalTime(int64_t micros_since_epoch);

// Columns separated by two spaces, each as wide as its widest cell; the
// last column is not padded so that lines carry no trailing spaces.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows);

std::string FormatStatus(const dragon::v1::StatusReply& reply, int64_t now_us);
std::string FormatNodes(const dragon::v1::ListNodesReply& reply, int64_t now_us);
std::string FormatTasks(const dragon::v1::ListTasksReply& reply, int64_t now_us);
// A task's resource request and grant, one line each ("cores 2, memory 1.0 GiB";
// "cpus 0,1; gpus 1; MPI 4 rank(s), 2 per node on h1,h2").
std::string FormatRequest(const dragon::v1::ResourceRequest& request);
std::string FormatGrant(const dragon::v1::ResourceGrant& grant);

std::string FormatTask(const dragon::v1::TaskInfo& task, int64_t now_us);
std::string FormatCancel(uint64_t task_id, const dragon::v1::CancelReply& reply);
// What `dragonctl nodes drain|undrain NODE` prints: the node's new state.
std::string FormatDrain(const dragon::v1::NodeInfo& node, bool drain);

// What `dragonctl nodes add HOST...` prints on stdout: one line per added
// node with its state ("node h4 is ready (host h4, incarnation 1, 2
// workers)"). Nodes of hosts that failed are left out: the reply may list an
// earlier incarnation of such a host (lost or gone), which was not added.
std::string FormatAddedNodes(const dragon::v1::AddNodesReply& reply);
// The hosts of an AddNodes reply that could not be added, one "HOST: why" a
// line (the head's words), then "N of M host(s) could not be added";
// "" when none failed. `asked` is the number of hosts requested.
std::string FormatAddFailures(const dragon::v1::AddNodesReply& reply, size_t asked);

// What `dragonctl nodes remove NODE` prints: the node drains and its agent
// leaves once its running tasks end.
std::string FormatRemove(const dragon::v1::NodeInfo& node);

// Where the removal of `node_id` (incarnation `incarnation`, as RemoveNode
// returned it) stands in a ListNodes reply, for `nodes remove --wait`.
struct RemovalState {
  enum Kind { kLeaving, kGone, kLost };
  Kind kind = kLeaving;
  std::string text;  // for people: what is left to do, or how it ended
};
RemovalState DescribeRemoval(const dragon::v1::ListNodesReply& nodes, const std::string& node_id,
                             uint64_t incarnation);

// Protobuf JSON with proto field names and every primitive field present
// (zeros included), so that scripts can rely on the keys; ends in '\n'.
std::string ToJson(const google::protobuf::Message& message);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_FORMAT_H_
