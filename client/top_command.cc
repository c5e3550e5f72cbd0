#include "client/top_command.h"

#include <memory>
#include <utility>

namespace dragon::client {

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
