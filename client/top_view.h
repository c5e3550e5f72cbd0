// What `dragonctl top` shows: the head's task counts and every node's load
// (its agent's NodeLoad, sent with each heartbeat), with rates taken from two
// successive samples. Pure functions of the samples, so that they are tested
// on fixed replies and times; the polling loop is client/top_command.h.
#ifndef DRAGON_CLIENT_TOP_VIEW_H_
#define DRAGON_CLIENT_TOP_VIEW_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "proto/head.pb.h"

namespace dragon::client {

// One poll of the head: Status and ListNodes, and when they were taken.
struct TopSample {
  int64_t at_us = 0;  // wall clock, microseconds since the epoch
  dragon::v1::StatusReply status;
  dragon::v1::ListNodesReply nodes;
};

// A node's row: its last NodeLoad and how fast it finishes tasks.
struct TopNode {
  const dragon::v1::NodeInfo* info = nullptr;  // into the sample it was made from
  // Tasks it finished per second since the previous sample; none for the
  // first sample, or when the node's agent changed (a new incarnation
  // restarts its count).
  std::optional<double> done_per_s;
};

// Everything one frame shows. Rates are empty for the first sample and when
// the samples are not in order.
struct TopFrame {
  const TopSample* now = nullptr;
  double interval_s = 0;               // since the previous sample; 0 for the first
  uint64_t finished = 0;               // done + failed + cancelled, forgotten ones included
  std::optional<double> submitted_per_s;  // new task ids per second
  std::optional<double> finished_per_s;
  std::vector<TopNode> nodes;
};

// Finished tasks of a Status: done, failed and cancelled, kept or forgotten
// (dragond --keep-finished drops old ones from the counts by state).
uint64_t FinishedTasks(const dragon::v1::StatusReply& status);

// The frame of `now`, with rates against `previous` (null for the first).
// Both samples must outlive the frame.
TopFrame MakeTopFrame(const TopSample* previous, const TopSample& now);

// The frame for people: a header (head, uptime, tasks by state, rates) and a
// table with a row per node:
//   NODE STATE CPU LOAD MEM WORKERS-RSS RUNNING QUEUED DONE/S DONE SHM HEARTBEAT
// CPU is the host's busy share, MEM used/total; "-" where nothing was measured.
std::string FormatTop(const TopFrame& frame);

// The frame as one line of JSON (for scripts: one object per sample), with
// the same numbers; rates are null where the text shows "-".
std::string TopJson(const TopFrame& frame);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_TOP_VIEW_H_
