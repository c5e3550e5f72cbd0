#include "client/dragonctl_commands.h"

#include <unistd.h>

#include <iostream>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/format.h"
#include "client/logs_format.h"
#include "client/top_command.h"

namespace dragon::client {
namespace {

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

}  // namespace

int Usage(const std::string& message) {
  std::cerr << "dragonctl: " << message << "\n";
  return kExitUsage;
}

int Fail(const absl::Status& status) {
  std::cerr << "dragonctl: " << status.message() << "\n";
  return kExitError;
}

int RunCommand(HeadClient& head, const CommandLine& command) {
  const std::string& name = command.name;
  const bool json = command.json;
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
  if (name == "nodes" && !command.add_hosts.empty()) {
    absl::StatusOr<dragon::v1::AddNodesReply> added = head.AddNodes(command.add_hosts);
    if (!added.ok()) return Fail(added.status());
    std::cout << (json ? ToJson(*added) : FormatAddedNodes(*added));
    std::cout.flush();
    const std::string failures = FormatAddFailures(*added, command.add_hosts.size());
    for (absl::string_view line : absl::StrSplit(failures, '\n', absl::SkipEmpty())) {
      std::cerr << "dragonctl: " << line << "\n";
    }
    return !failures.empty() || !std::cout.good() ? kExitError : kExitOk;
  }
  if (name == "nodes" && command.remove) {
    absl::StatusOr<dragon::v1::NodeInfo> removing = head.RemoveNode(command.node_id);
    if (!removing.ok()) return Fail(removing.status());
    std::cout << (json ? ToJson(*removing) : FormatRemove(*removing));
    std::cout.flush();
    if (!command.wait) return std::cout.good() ? kExitOk : kExitError;
    return WaitUntilGone(head, command.node_id, removing->incarnation(), json);
  }
  if (name == "nodes" && command.drain) {
    const bool drain = *command.drain;
    return emit(head.DrainNode(command.node_id, drain),
                [&](const auto& r) { return FormatDrain(r, drain); });
  }
  if (name == "nodes") {
    return emit(head.ListNodes(), [&](const auto& r) { return FormatNodes(r, now_us()); });
  }
  if (name == "ps") {
    return emit(head.ListTasks(command.state.value_or(dragon::v1::TASK_STATE_UNSPECIFIED),
                               command.limit.value_or(0)),
                [&](const auto& r) { return FormatTasks(r, now_us()); });
  }
  if (name == "show") {
    return emit(head.GetTask(command.task_id),
                [&](const auto& r) { return FormatTask(r, now_us()); });
  }
  if (name == "logs") {
    return emit(head.TaskLogs(command.task_id,
                              command.rank >= 0 ? std::optional<int32_t>(command.rank)
                                                : std::nullopt,
                              static_cast<uint64_t>(command.bytes)),
                [](const auto& r) { return FormatLogs(r); });
  }
  if (name == "cancel") {
    return emit(head.Cancel(command.task_id),
                [&](const auto& r) { return FormatCancel(command.task_id, r); });
  }
  if (name == "top") return Top(head, command.interval, command.iterations, json);
  // Every command of the table (client/dragonctl_help.cc) but help is handled above.
  return Usage(absl::StrCat("command '", name, "' is not implemented"));
}

}  // namespace dragon::client
