#include "common/data_socket_frames.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dragon::common {
namespace {

void PutU32(char* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t GetU32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8) |
         (static_cast<uint32_t>(u[2]) << 16) | (static_cast<uint32_t>(u[3]) << 24);
}

// Waits until `fd` has `events` or `until` passes.
absl::Status WaitFor(int fd, short events, absl::Time until) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int ready = poll(&p, 1, PollMillis(until));
    if (ready > 0) return absl::OkStatus();  // readable, writable, or hung up: the call says
    if (ready == 0) {
      if (absl::Now() >= until) return absl::DeadlineExceededError("timed out");
      continue;  // poll's millisecond rounding woke it a little early
    }
    if (errno != EINTR) return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
  }
}

}  // namespace

std::string DataMethodName(uint8_t method) {
  switch (static_cast<DataMethod>(method)) {
    case DataMethod::kPull:
      return "Pull";
    case DataMethod::kPush:
      return "Push";
    case DataMethod::kDict:
      return "Dict";
    case DataMethod::kChannel:
      return "Channel";
  }
  return absl::StrCat("method ", method);
}

std::string EncodeDataRequestHeader(DataMethod method, uint32_t timeout_ms, size_t body_size) {
  std::string out(kDataRequestHeaderSize, '\0');
  PutU32(out.data(), static_cast<uint32_t>(kDataRequestHeaderSize - 4 + body_size));
  out[4] = static_cast<char>(method);
  PutU32(out.data() + 5, timeout_ms);
  return out;
}

std::string EncodeDataReplyHeader(absl::StatusCode code, size_t body_size) {
  std::string out(kDataReplyHeaderSize, '\0');
  PutU32(out.data(), static_cast<uint32_t>(kDataReplyHeaderSize - 4 + body_size));
  out[4] = static_cast<char>(static_cast<int>(code));
  return out;
}

absl::Status DecodeDataRequestHeader(const char* header, uint32_t max_body_bytes,
                                     DataRequestHeader* out) {
  const uint32_t length = GetU32(header);
  constexpr uint32_t kOwn = kDataRequestHeaderSize - 4;
  if (length < kOwn) {
    return absl::DataLossError(absl::StrCat("request frame length ", length,
                                            " is below its header's ", kOwn, " bytes"));
  }
  out->method = static_cast<uint8_t>(header[4]);
  out->timeout_ms = GetU32(header + 5);
  out->body_size = length - kOwn;
  if (out->body_size > max_body_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a ", DataMethodName(out->method), " request of ", out->body_size,
        " bytes exceeds the data socket's maximum of ", max_body_bytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status DecodeDataReplyHeader(const char* header, DataReplyHeader* out) {
  const uint32_t length = GetU32(header);
  constexpr uint32_t kOwn = kDataReplyHeaderSize - 4;
  if (length < kOwn) {
    return absl::DataLossError(
        absl::StrCat("reply frame length ", length, " is below its header's ", kOwn, " bytes"));
  }
  const int code = static_cast<unsigned char>(header[4]);
  if (code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::DataLossError(absl::StrCat("reply frame code ", code, " is not a status code"));
  }
  out->code = static_cast<absl::StatusCode>(code);
  out->body_size = length - kOwn;
  return absl::OkStatus();
}

int PollMillis(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))),
                                            24 * 3600 * 1000));
}

absl::Status WriteAllParts(int fd, const absl::string_view* parts, size_t count,
                           absl::Time deadline, absl::Duration stall) {
  constexpr size_t kMaxParts = 8;
  iovec iov[kMaxParts];
  size_t n = 0;
  for (size_t i = 0; i < count && n < kMaxParts; ++i) {
    if (parts[i].empty()) continue;
    iov[n++] = iovec{const_cast<char*>(parts[i].data()), parts[i].size()};
  }
  size_t first = 0;
  while (first < n) {
    msghdr msg{};
    msg.msg_iov = iov + first;
    msg.msg_iovlen = n - first;
    const ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        const absl::Time until = std::min(deadline, absl::Now() + stall);
        if (absl::Status s = WaitFor(fd, POLLOUT, until); !s.ok()) {
          return s.code() == absl::StatusCode::kDeadlineExceeded
                     ? absl::DeadlineExceededError("the peer stopped reading (write timed out)")
                     : s;
        }
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) {
        return absl::UnavailableError(absl::StrCat("the peer closed the connection (", std::strerror(errno), ")"));
      }
      return absl::InternalError(absl::StrCat("sendmsg: ", std::strerror(errno)));
    }
    size_t left = static_cast<size_t>(sent);
    while (first < n && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (first < n) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> SocketReader::ReadSome(char* dst, size_t max, absl::Time until) {
  if (begin_ < end_) {
    const size_t take = std::min(max, end_ - begin_);
    std::memcpy(dst, buffer_ + begin_, take);
    begin_ += take;
    return take;
  }
  begin_ = end_ = 0;
  // Large reads go straight to their destination, small ones through the
  // buffer (a reply's header and small body in one recv).
  const bool direct = max >= sizeof(buffer_);
  for (;;) {
    const ssize_t got = recv(fd_, direct ? dst : buffer_, direct ? max : sizeof(buffer_), MSG_DONTWAIT);
    if (got > 0) {
      if (direct) return static_cast<size_t>(got);
      end_ = static_cast<size_t>(got);
      const size_t take = std::min(max, end_);
      std::memcpy(dst, buffer_, take);
      begin_ = take;
      return take;
    }
    if (got == 0) return absl::UnavailableError("the peer closed the connection");
    if (errno == EINTR) continue;
    if (errno == ECONNRESET) return absl::UnavailableError("the peer reset the connection");
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      return absl::InternalError(absl::StrCat("recv: ", std::strerror(errno)));
    }
    if (absl::Status s = WaitFor(fd_, POLLIN, until); !s.ok()) return s;
  }
}

absl::Status SocketReader::ReadExactly(char* dst, size_t n, absl::Time first_byte_deadline,
                                       absl::Time deadline, absl::Duration stall) {
  size_t got = 0;
  while (got < n) {
    const absl::Time until =
        got == 0 ? first_byte_deadline : std::min(deadline, absl::Now() + stall);
    absl::StatusOr<size_t> some = ReadSome(dst + got, n - got, until);
    if (!some.ok()) {
      if (got == 0) return some.status();  // clean: nothing of this read had come
      const absl::StatusCode code = some.status().code() == absl::StatusCode::kUnavailable
                                        ? absl::StatusCode::kDataLoss
                                        : some.status().code();
      return absl::Status(code, absl::StrCat(some.status().message(), " after ", got, " of ", n,
                                             " bytes"));
    }
    got += *some;
  }
  return absl::OkStatus();
}

absl::Status SocketReader::ReadInto(std::string* out, size_t n, absl::Time deadline,
                                    absl::Duration stall, size_t allocate_first) {
  out->clear();
  out->resize(std::min(n, allocate_first));
  size_t got = 0;
  while (got < n) {
    if (got == out->size()) out->resize(std::min(n, std::max<size_t>(out->size() * 2, 4096)));
    absl::StatusOr<size_t> some =
        ReadSome(out->data() + got, out->size() - got, std::min(deadline, absl::Now() + stall));
    if (!some.ok()) {
      const absl::StatusCode code = some.status().code() == absl::StatusCode::kUnavailable
                                        ? absl::StatusCode::kDataLoss
                                        : some.status().code();
      out->clear();
      return absl::Status(code, absl::StrCat(some.status().message(), " after ", got, " of ", n,
                                             " bytes"));
    }
    got += *some;
  }
  out->resize(n);
  return absl::OkStatus();
}

}  // namespace dragon::common
