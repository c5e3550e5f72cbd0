// DataSocketServer: the serving end of an agent's data socket
// (common/data_socket_frames.h), for agent/data_service.h: a Unix socket,
// mode 0600, on which the node's processes send request frames and get one
// reply frame for each.
//
// A thread per connection, at most `max_connections` at once. Not a pool of
// workers: a call may wait long in its handler (a Pull over UCX up to its
// timeout, a Dict PUT for room in a full pool, a forwarded call for a lost
// peer), and with a fixed pool a few such calls would hold up every other
// process of the node; a connection's own calls are one at a time anyway
// (its client waits for each reply), so a thread per connection never
// queues one process's call behind another's. The bound (256 by default:
// a node's workers and app threads with a connection each, with room for a
// 64-producer, 64-consumer Queue from another node) keeps a runaway client
// from taking the agent's threads; a connection over it is answered
// ResourceExhausted naming the bound, and closed.
//
// A client cannot hurt the agent by what it sends: a frame announcing more
// than `max_body_bytes` is answered ResourceExhausted and the connection
// closed (its bytes are never allocated: bodies grow as they arrive); a
// frame that stops mid-way for `stall_timeout`, or a peer that stops
// reading its reply, loses its connection; a connection idle between calls
// for `idle_timeout` is closed (clients replace connections idle for half
// as long before using them: common/data_socket_client.h); garbage (a
// length below a header) is answered DataLoss and closed.
#ifndef DRAGON_AGENT_DATA_SOCKET_SERVER_H_
#define DRAGON_AGENT_DATA_SOCKET_SERVER_H_

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/data_socket_frames.h"

namespace dragon::agent {

struct DataSocketServerOptions {
  int max_connections = 256;
  uint32_t max_body_bytes = common::kMaxDataBodyBytes;
  absl::Duration stall_timeout = absl::Seconds(10);
  absl::Duration idle_timeout = absl::Minutes(5);
};

// One call: the request's method and body; the reply's body (OK) or the
// error (its code and message go back).
using DataRequestHandler =
    std::function<absl::StatusOr<std::string>(uint8_t method, uint32_t timeout_ms,
                                              absl::string_view body)>;

class DataSocketServer {
 public:
  // Listens on `socket_path` (an old socket file there is replaced; the new
  // one is mode 0600 before anyone can connect). Errors name the path.
  static absl::StatusOr<std::unique_ptr<DataSocketServer>> Start(
      const std::string& socket_path, DataRequestHandler handler,
      DataSocketServerOptions options = {});
  // Stops accepting, closes every connection (a call in its handler finishes
  // first: its thread is joined) and removes the socket file.
  ~DataSocketServer();
  DataSocketServer(const DataSocketServer&) = delete;
  DataSocketServer& operator=(const DataSocketServer&) = delete;

  const std::string& socket_path() const { return socket_path_; }
  // Connections open now (tests, logs).
  int connections() const;

 private:
  struct Conn {
    int fd = -1;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  DataSocketServer(std::string socket_path, int listen_fd, int wake_fd, DataRequestHandler handler,
                   DataSocketServerOptions options);
  void AcceptLoop();
  void Serve(Conn* conn);
  // Joins and forgets the connections whose thread ended.
  void ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string socket_path_;
  const int listen_fd_;
  const int wake_fd_;  // an eventfd: written to stop the accept loop
  const DataRequestHandler handler_;
  const DataSocketServerOptions options_;
  std::atomic<bool> stopping_{false};
  mutable absl::Mutex mu_;
  std::list<Conn> conns_ ABSL_GUARDED_BY(mu_);
  std::thread accept_thread_;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_DATA_SOCKET_SERVER_H_
