#include "agent/incarnations.h"

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {

absl::Status RunIncarnations(HeadConnection* conn, absl::Duration rejoin_timeout,
                             const ServeIncarnation& serve) {
  uint64_t previous = 0;
  absl::Duration connect_timeout = absl::ZeroDuration();  // the connection's default
  while (true) {
    absl::Status status = conn->Connect(previous, connect_timeout);
    if (!status.ok()) {
      if (previous != 0 && absl::IsAlreadyExists(status)) {
        return absl::AlreadyExistsError(absl::StrCat(
            "this agent was replaced while it was cut off from the head: ", status.message()));
      }
      return status;
    }
    status = serve(conn->registered());
    // OK: the head (or a signal) ended it on purpose. Unavailable: the head
    // was lost; anything else is not worth another try.
    if (status.ok() || !absl::IsUnavailable(status) || rejoin_timeout <= absl::ZeroDuration()) {
      return status;
    }
    previous = conn->registered().incarnation();
    spdlog::warn("{}; killed everything incarnation {} ran; registering again as a new "
                 "incarnation (for up to {})",
                 std::string(status.message()), previous, absl::FormatDuration(rejoin_timeout));
    connect_timeout = rejoin_timeout;
  }
}

}  // namespace dragon::agent
