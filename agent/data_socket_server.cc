#include "agent/data_socket_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

// Writes one reply frame: the body when `reply` is OK, else its code and message.
absl::Status WriteReply(int fd, const absl::StatusOr<std::string>& reply, absl::Time deadline,
                        absl::Duration stall) {
  const absl::string_view body = reply.ok() ? absl::string_view(*reply) : reply.status().message();
  const std::string header = common::EncodeDataReplyHeader(
      reply.ok() ? absl::StatusCode::kOk : reply.status().code(), body.size());
  const absl::string_view parts[] = {header, body};
  return common::WriteAllParts(fd, parts, 2, deadline, stall);
}

}  // namespace

absl::StatusOr<std::unique_ptr<DataSocketServer>> DataSocketServer::Start(
    const std::string& socket_path, DataRequestHandler handler, DataSocketServerOptions options) {
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data socket path ", socket_path, " is ", socket_path.size(),
        " bytes, more than a Unix socket's ", sizeof(addr.sun_path) - 1,
        " (a shorter --shm-dir or node id)"));
  }
  struct stat st {};
  if (lstat(socket_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
      unlink(socket_path.c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot remove the old data socket ", socket_path, ": ", std::strerror(errno)));
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot make the data socket ", socket_path, ": ",
                                               std::strerror(errno)));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  // bind, then mode 0600, then listen: nobody can connect before the mode
  // is the agent user's only (connecting to an unlistened socket is refused).
  auto fail = [&](const std::string& what) {
    const std::string why = std::strerror(errno);
    close(fd);
    unlink(socket_path.c_str());
    return absl::UnavailableError(absl::StrCat("cannot ", what, " data socket ", socket_path, ": ", why));
  };
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot bind the data socket ", socket_path, ": ", why));
  }
  if (chmod(socket_path.c_str(), 0600) != 0) {
    absl::Status s = fail("make mode 0600 the");
    return absl::FailedPreconditionError(s.message());
  }
  if (listen(fd, SOMAXCONN) != 0) return fail("listen on the");
  const int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) return fail("make the stop event of the");
  return std::unique_ptr<DataSocketServer>(
      new DataSocketServer(socket_path, fd, wake, std::move(handler), options));
}

DataSocketServer::DataSocketServer(std::string socket_path, int listen_fd, int wake_fd,
                                   DataRequestHandler handler, DataSocketServerOptions options)
    : socket_path_(std::move(socket_path)),
      listen_fd_(listen_fd),
      wake_fd_(wake_fd),
      handler_(std::move(handler)),
      options_(options) {
  accept_thread_ = std::thread([this] { AcceptLoop(); });
}

DataSocketServer::~DataSocketServer() {
  stopping_.store(true);
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  accept_thread_.join();
  close(listen_fd_);
  close(wake_fd_);
  struct stat st {};
  if (lstat(socket_path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(socket_path_.c_str());
  absl::MutexLock lock(&mu_);
  // Wakes every connection's thread (a read sees EOF); one inside its
  // handler finishes the call first.
  for (Conn& c : conns_) shutdown(c.fd, SHUT_RDWR);
  for (Conn& c : conns_) {
    c.thread.join();
    close(c.fd);
  }
  conns_.clear();
}

int DataSocketServer::connections() const {
  absl::MutexLock lock(&mu_);
  int open = 0;
  for (const Conn& c : conns_) open += c.done.load() ? 0 : 1;
  return open;
}

void DataSocketServer::ReapLocked() {
  for (auto it = conns_.begin(); it != conns_.end();) {
    if (!it->done.load()) {
      ++it;
      continue;
    }
    it->thread.join();
    close(it->fd);
    it = conns_.erase(it);
  }
}

void DataSocketServer::AcceptLoop() {
  while (!stopping_.load()) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    // The timeout only reaps ended connections' threads now and then.
    if (poll(fds, 2, 1000) < 0 && errno != EINTR) {
      spdlog::error("data socket {}: poll: {}", socket_path_, std::strerror(errno));
      return;
    }
    if (stopping_.load()) return;
    absl::MutexLock lock(&mu_);
    ReapLocked();
    if ((fds[0].revents & POLLIN) == 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        spdlog::warn("data socket {}: accept: {}", socket_path_, std::strerror(errno));
      }
      continue;
    }
    if (static_cast<int>(conns_.size()) >= options_.max_connections) {
      const absl::Status refused = absl::ResourceExhaustedError(absl::StrCat(
          "the agent's data socket ", socket_path_, " serves at most ", options_.max_connections,
          " connections at once (one per process thread that calls it): close some"));
      spdlog::warn("{}", std::string(refused.message()));
      (void)WriteReply(fd, refused, absl::Now() + absl::Milliseconds(100), absl::InfiniteDuration());
      shutdown(fd, SHUT_RDWR);
      close(fd);
      continue;
    }
    Conn& conn = conns_.emplace_back();
    conn.fd = fd;
    conn.thread = std::thread([this, c = &conn] { Serve(c); });
  }
}

void DataSocketServer::Serve(Conn* conn) {
  const int fd = conn->fd;
  common::SocketReader reader(fd);
  while (!stopping_.load()) {
    // A request's first byte may take the idle timeout; the rest of it may
    // not stall.
    char header[common::kDataRequestHeaderSize];
    absl::Status read =
        reader.ReadExactly(header, 1, absl::Now() + options_.idle_timeout, absl::InfiniteFuture());
    if (!read.ok()) {
      // A clean close or an idle connection is the normal end.
      if (read.code() == absl::StatusCode::kDeadlineExceeded) {
        spdlog::debug("data socket {}: closing a connection idle for {}", socket_path_,
                      absl::FormatDuration(options_.idle_timeout));
      } else if (read.code() != absl::StatusCode::kUnavailable) {
        spdlog::warn("data socket {}: dropping a connection: {}", socket_path_, read.ToString());
      }
      break;
    }
    read = reader.ReadExactly(header + 1, sizeof(header) - 1, absl::Now() + options_.stall_timeout,
                              absl::InfiniteFuture(), options_.stall_timeout);
    if (!read.ok()) {
      spdlog::warn("data socket {}: dropping a connection: a request header cut short: {}",
                   socket_path_, read.ToString());
      break;
    }
    common::DataRequestHeader request;
    if (absl::Status bad = common::DecodeDataRequestHeader(header, options_.max_body_bytes, &request);
        !bad.ok()) {
      spdlog::warn("data socket {}: refusing a request and closing its connection: {}",
                   socket_path_, bad.ToString());
      (void)WriteReply(fd, bad, absl::Now() + options_.stall_timeout, options_.stall_timeout);
      break;
    }
    std::string body;
    read = reader.ReadInto(&body, request.body_size, absl::InfiniteFuture(), options_.stall_timeout);
    if (!read.ok()) {
      spdlog::warn("data socket {}: dropping a connection: a {} request's body: {}", socket_path_,
                   common::DataMethodName(request.method), read.ToString());
      break;
    }
    const absl::Time started = absl::Now();
    const absl::StatusOr<std::string> reply = handler_(request.method, request.timeout_ms, body);
    const absl::Duration took = absl::Now() - started;
    if (request.timeout_ms > 0 && took > absl::Milliseconds(request.timeout_ms)) {
      spdlog::debug("data socket {}: a {} call took {}, past its caller's {} ms", socket_path_,
                    common::DataMethodName(request.method), absl::FormatDuration(took),
                    request.timeout_ms);
    }
    if (absl::Status w = WriteReply(fd, reply, absl::InfiniteFuture(), options_.stall_timeout);
        !w.ok()) {
      spdlog::debug("data socket {}: a {} reply was not delivered: {}", socket_path_,
                    common::DataMethodName(request.method), w.ToString());
      break;
    }
  }
  // The peer sees EOF now; the fd itself is closed when the thread is reaped
  // (so that nobody else's fd gets the number while this one may be shut).
  shutdown(fd, SHUT_RDWR);
  conn->done.store(true);
}

}  // namespace dragon::agent
