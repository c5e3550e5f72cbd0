#include "client/top_command.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <utility>

#include "absl/time/clock.h"

namespace dragon::client {
namespace {

std::atomic<bool> g_interrupted{false};

extern "C" void OnInterrupt(int) { g_interrupted.store(true); }

}  // namespace

TopSource HeadTopSource(HeadClient* head) {
  struct sigaction action = {};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  TopSource source;
  source.now = [] { return absl::Now(); };
  source.wait_until = [](absl::Time deadline) {
    while (!g_interrupted.load() && absl::Now() < deadline) {
      absl::SleepFor(std::min(absl::Milliseconds(100), deadline - absl::Now()));
    }
    return !g_interrupted.load();
  };
  source.sample = [head]() -> absl::StatusOr<TopSample> {
    TopSample sample;
    sample.at_us = absl::ToUnixMicros(absl::Now());
    absl::StatusOr<dragon::v1::StatusReply> status = head->Status();
    if (!status.ok()) return status.status();
    absl::StatusOr<dragon::v1::ListNodesReply> nodes = head->ListNodes();
    if (!nodes.ok()) return nodes.status();
    sample.status = *std::move(status);
    sample.nodes = *std::move(nodes);
    return sample;
  };
  return source;
}

absl::Status RunTop(const TopOptions& options, const TopSource& source, std::ostream& out) {
  // Two samples are kept: a frame's rates compare the last one with this one.
  std::unique_ptr<TopSample> previous;
  absl::Time next = source.now();
  for (uint64_t shown = 0; options.iterations == 0 || shown < options.iterations; ++shown) {
    if (shown > 0 && !source.wait_until(next)) return absl::OkStatus();
    // The next sample is due one interval after this one was asked for, so
    // that a slow head does not stretch the period by its answer time.
    next = source.now() + options.interval;
    absl::StatusOr<TopSample> sample = source.sample();
    if (!sample.ok()) return sample.status();
    auto now = std::make_unique<TopSample>(*std::move(sample));
    const TopFrame frame = MakeTopFrame(previous.get(), *now);
    if (options.json) {
      out << TopJson(frame);
    } else {
      if (options.redraw) out << "\x1b[H\x1b[2J";  // home, clear: a frame in place
      out << (shown > 0 && !options.redraw ? "\n" : "") << FormatTop(frame);
    }
    out.flush();
    if (!out.good()) return absl::DataLossError("cannot write to standard output");
    previous = std::move(now);
  }
  return absl::OkStatus();
}

}  // namespace dragon::client
