#include "common/data_socket_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dragon::common {
namespace {

struct Connection {
  Connection(int fd_in, pid_t pid_in) : fd(fd_in), pid(pid_in), reader(fd_in) {}
  ~Connection() { close(fd); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  int fd;
  pid_t pid;  // the process that connected (a forked child must not share it)
  absl::Time last_used = absl::Now();
  SocketReader reader;
};

// This thread's connections by socket path; closed when the thread exits.
std::map<std::string, std::unique_ptr<Connection>>& ThreadConnections() {
  thread_local std::map<std::string, std::unique_ptr<Connection>> connections;
  return connections;
}

absl::StatusOr<std::unique_ptr<Connection>> Connect(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("the path is ", path.size(), " bytes, more than a Unix socket's ",
                                                   sizeof(addr.sun_path) - 1));
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    close(fd);
    if (err == ENOENT) {
      return absl::UnavailableError("no such socket (is the node's agent running with a data plane?)");
    }
    if (err == ECONNREFUSED) {
      return absl::UnavailableError("connection refused (nobody serves the socket: did the agent exit?)");
    }
    return absl::UnavailableError(absl::StrCat("connect: ", std::strerror(err)));
  }
  return std::make_unique<Connection>(fd, getpid());
}

// Whether a kept connection can carry the next call: made by this process,
// used recently, and not closed by the agent since (a readable idle
// connection is at EOF: the agent exited or closed it).
bool Reusable(const Connection& c) {
  if (c.pid != getpid()) return false;
  if (absl::Now() - c.last_used > kDataConnectionReuseIdle) return false;
  if (c.reader.buffered() > 0) return false;  // bytes nobody asked for: out of step
  pollfd p{c.fd, POLLIN | POLLRDHUP, 0};
  return poll(&p, 1, 0) == 0;
}

DataCallResult Unreachable(absl::Status status) {
  DataCallResult out;
  out.unreachable = true;
  out.status = absl::UnavailableError(status.message());
  return out;
}

// Reads one reply frame; *timed_out when none came by `deadline` (then the
// status is DeadlineExceeded: ours, not the agent's).
DataCallResult ReadReply(Connection& c, absl::Time deadline, bool* timed_out) {
  *timed_out = false;
  DataCallResult out;
  char header[kDataReplyHeaderSize];
  absl::Status read = c.reader.ReadExactly(header, sizeof(header), deadline, deadline);
  DataReplyHeader decoded;
  if (read.ok()) read = DecodeDataReplyHeader(header, &decoded);
  // The agent's word on the size is trusted: the reply is allocated at once.
  if (read.ok()) {
    read = c.reader.ReadInto(&out.reply, decoded.body_size, deadline, absl::InfiniteDuration(),
                             decoded.body_size);
  }
  if (!read.ok()) {
    if (read.code() == absl::StatusCode::kDeadlineExceeded) {
      *timed_out = true;
      out.status = absl::DeadlineExceededError(read.message());
      return out;
    }
    return Unreachable(absl::UnavailableError(
        absl::StrCat("the agent closed the connection before it answered (did it exit?): ",
                     read.message())));
  }
  if (decoded.code != absl::StatusCode::kOk) {
    out.status = absl::Status(decoded.code, out.reply);
    out.reply.clear();
  }
  return out;
}

}  // namespace

DataCallResult CallDataSocket(const std::string& socket_path, DataMethod method,
                              absl::string_view request, absl::Duration timeout) {
  if (request.size() > kMaxDataBodyBytes) {
    DataCallResult out;
    out.status = absl::InvalidArgumentError(
        absl::StrCat("a ", DataMethodName(static_cast<uint8_t>(method)), " request of ",
                     request.size(), " bytes exceeds the data socket's maximum of ",
                     kMaxDataBodyBytes, " bytes"));
    return out;
  }
  const absl::Time deadline = absl::Now() + timeout;
  const uint32_t timeout_ms = static_cast<uint32_t>(
      std::min<int64_t>(absl::ToInt64Milliseconds(timeout), UINT32_MAX));
  const std::string header = EncodeDataRequestHeader(method, timeout_ms, request.size());
  const absl::string_view parts[] = {header, request};

  auto& connections = ThreadConnections();
  std::unique_ptr<Connection>& conn = connections[socket_path];
  // A kept connection the agent closed is replaced (it never saw this
  // request); so is one whose request could not be written (the agent closed
  // it just now: a partial request is never served).
  for (int attempt = 0;; ++attempt) {
    if (conn != nullptr && !Reusable(*conn)) conn.reset();
    const bool fresh = conn == nullptr;
    if (fresh) {
      absl::StatusOr<std::unique_ptr<Connection>> made = Connect(socket_path);
      if (!made.ok()) {
        connections.erase(socket_path);
        return Unreachable(made.status());
      }
      conn = *std::move(made);
    }
    absl::Status written = WriteAllParts(conn->fd, parts, 2, deadline);
    if (written.ok()) break;
    if (written.code() == absl::StatusCode::kDeadlineExceeded) {
      connections.erase(socket_path);  // a partial request is on it
      DataCallResult out;
      out.status = absl::DeadlineExceededError(absl::StrCat("sending the request: ", written.message()));
      return out;
    }
    // The agent may have refused the connection with a reply before closing
    // it (too many connections, a request too large): that reply is the answer.
    bool nothing_yet = false;
    DataCallResult refusal = ReadReply(*conn, absl::Now(), &nothing_yet);
    if (!refusal.unreachable && !nothing_yet) {
      connections.erase(socket_path);
      return refusal;
    }
    conn.reset();
    if (fresh || attempt > 0) {
      connections.erase(socket_path);
      return Unreachable(written);
    }
  }
  bool timed_out = false;
  DataCallResult out = ReadReply(*conn, deadline, &timed_out);
  if (out.unreachable || timed_out) {
    // Out of step (a late reply would answer the next call): dropped.
    connections.erase(socket_path);
    if (timed_out) {
      out.status = absl::DeadlineExceededError(absl::StrCat(
          "no reply from the agent within ", absl::FormatDuration(timeout)));
    }
    return out;
  }
  conn->last_used = absl::Now();
  return out;
}

void CloseThreadDataConnections() { ThreadConnections().clear(); }

}  // namespace dragon::common
