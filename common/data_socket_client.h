// The calling end of an agent's data socket (common/data_socket_frames.h):
// what dragon_parsl._core.agent_pull/agent_push/agent_dict/agent_channel use
// to reach their node's agent (agent/data_service.h).
//
// Each thread keeps one connection per socket path and reuses it for all its
// calls (a connect per call would cost as much as the call), so the calls of
// one thread are one at a time on it and threads never wait for each other.
// A connection found closed before a call (the agent restarted, or closed it
// after a long idle) is replaced and the call made once more; one that
// breaks while waiting for a reply is an error (the agent may have done the
// work: a call is not repeated after the request was delivered). After a
// fork, the child makes its own connections (the parent's are not shared).
#ifndef DRAGON_COMMON_DATA_SOCKET_CLIENT_H_
#define DRAGON_COMMON_DATA_SOCKET_CLIENT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/data_socket_frames.h"

namespace dragon::common {

struct DataCallResult {
  absl::Status status;       // OK, the agent's own error, or why its socket failed
  std::string reply;         // the serialized reply (status OK)
  bool unreachable = false;  // the socket failed, not the agent's operation
};

// A connection unused for this long is replaced before its next call rather
// than reused: the server closes connections idle for longer (see
// agent/data_socket_server.h), and a request must never race that close.
inline constexpr absl::Duration kDataConnectionReuseIdle = absl::Seconds(60);

// Sends `request` (a serialized message of `method`'s request type) to the
// agent serving the Unix socket `socket_path` and waits for its reply at
// most `timeout` (the whole call; a late reply is DeadlineExceeded and the
// connection is dropped). Blocks the calling thread; no locks shared with
// other threads.
DataCallResult CallDataSocket(const std::string& socket_path, DataMethod method,
                              absl::string_view request, absl::Duration timeout);

// Closes this thread's connections (tests: the next call connects afresh).
void CloseThreadDataConnections();

}  // namespace dragon::common

#endif  // DRAGON_COMMON_DATA_SOCKET_CLIENT_H_
