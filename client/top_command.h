// `dragonctl top`: polls the head (Status and ListNodes) every interval and
// shows each sample (client/top_view.h) until told to stop: a number of
// samples, Ctrl-C, or a head that stops answering.
#ifndef DRAGON_CLIENT_TOP_COMMAND_H_
#define DRAGON_CLIENT_TOP_COMMAND_H_

#include <cstdint>
#include <functional>
#include <ostream>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/head_client.h"
#include "client/top_view.h"

namespace dragon::client {

struct TopOptions {
  absl::Duration interval = absl::Seconds(2);
  uint64_t iterations = 0;  // samples to show; 0: until stopped
  bool json = false;        // one JSON object per line instead of frames
  bool redraw = false;      // clear the terminal before each frame (stdout is a terminal)
};

// Where the samples come from and how time passes (tests give their own).
struct TopSource {
  std::function<absl::StatusOr<TopSample>()> sample;
  // Sleeps until `deadline` or until stop() says so; returns whether to go on.
  std::function<bool(absl::Time deadline)> wait_until;
  std::function<absl::Time()> now;
};

// The samples of a real head (Status, then ListNodes) on the wall clock. Its
// wait_until returns false once SIGINT came: it installs a SIGINT handler for
// the rest of the process, so that Ctrl-C ends `top` between two samples
// (noticed within 0.1 s) instead of killing it mid-frame.
TopSource HeadTopSource(HeadClient* head);

// Shows samples on `out` until the options' count is reached (OK), wait_until
// says stop (OK: Ctrl-C), or a sample fails (its error, after what was shown).
absl::Status RunTop(const TopOptions& options, const TopSource& source, std::ostream& out);

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_TOP_COMMAND_H_
