// The frames of an agent's data socket (agent/data_service.h): the processes
// of a node call their agent's AgentData operations (proto/agent.proto: Pull,
// Push, Dict, Channel; the same request and reply messages) over a plain
// framed protocol on its Unix socket instead of gRPC, which cost ~200 us per
// call (HTTP/2 framing, the channel and its thread hops) where this costs a
// write and a read each way.
//
//   request: u32 length | u8 method  | u32 timeout_ms | serialized request
//   reply:   u32 length | u8 code    | serialized reply (code 0), else the error message
//
// Integers little-endian; `length` counts the bytes after itself. The code is
// an absl::StatusCode (numbered as gRPC's). One call at a time per
// connection: a reply answers the request before it. timeout_ms is the
// longest the caller waits for the reply (0: its default), for the server's
// log when it answers later than that.
//
// And the blocking socket I/O both ends use, bounded in time: a deadline for
// the whole operation and, for the server, a stall timeout (no byte moved
// for that long mid-frame: the peer hung or died).
#ifndef DRAGON_COMMON_DATA_SOCKET_FRAMES_H_
#define DRAGON_COMMON_DATA_SOCKET_FRAMES_H_

#include <sys/types.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace dragon::common {

// Which AgentData operation a request frame carries.
enum class DataMethod : uint8_t {
  kPull = 1,     // BlockTransfer -> BlockTransferred
  kPush = 2,     // BlockTransfer -> BlockTransferred
  kDict = 3,     // DictRequest -> DictReply
  kChannel = 4,  // ChannelRequest -> ChannelReply
};

// "Pull", "Push", "Dict", "Channel", else "method 17".
std::string DataMethodName(uint8_t method);

inline constexpr size_t kDataRequestHeaderSize = 9;  // length, method, timeout_ms
inline constexpr size_t kDataReplyHeaderSize = 5;    // length, code
// The largest body either way: a protobuf message's limit (a Channel SEND of
// a 1 GiB message fits; larger ones are refused naming the size).
inline constexpr uint32_t kMaxDataBodyBytes = INT_MAX;

std::string EncodeDataRequestHeader(DataMethod method, uint32_t timeout_ms, size_t body_size);
std::string EncodeDataReplyHeader(absl::StatusCode code, size_t body_size);

struct DataRequestHeader {
  uint8_t method = 0;  // raw: an unknown method is answered, not a broken stream
  uint32_t timeout_ms = 0;
  uint32_t body_size = 0;
};
struct DataReplyHeader {
  absl::StatusCode code = absl::StatusCode::kOk;
  uint32_t body_size = 0;
};
// Decode the first kData{Request,Reply}HeaderSize bytes of `header`. Errors:
// a length below the header's own (DataLoss), a body over `max_body_bytes`
// (ResourceExhausted naming both sizes), a code that is not a status code.
absl::Status DecodeDataRequestHeader(const char* header, uint32_t max_body_bytes,
                                     DataRequestHeader* out);
absl::Status DecodeDataReplyHeader(const char* header, DataReplyHeader* out);

// Time left until `deadline` as poll()'s milliseconds (rounded up, capped, 0
// when past; absl::InfiniteFuture: -1).
int PollMillis(absl::Time deadline);

// Writes all of `parts` (gathered, without joining them) to the connected
// socket `fd`, without SIGPIPE. Fails DeadlineExceeded at `deadline` or when
// no byte could be written for `stall` (the reader stopped reading),
// Unavailable when the peer closed (EPIPE/ECONNRESET), naming errno.
absl::Status WriteAllParts(int fd, const absl::string_view* parts, size_t count,
                           absl::Time deadline, absl::Duration stall = absl::InfiniteDuration());

// Reads from a connected socket through a buffer, so that a small frame's
// header and body come in one recv.
class SocketReader {
 public:
  explicit SocketReader(int fd) : fd_(fd) {}

  // Reads exactly `n` bytes into `dst`. The first byte may take until
  // `first_byte_deadline` (a request's arrival); after it, until `deadline`,
  // and no gap between bytes longer than `stall`. Errors: Unavailable when
  // the peer closed before the first byte ("closed", clean) or DataLoss in
  // the middle (it died mid-frame), DeadlineExceeded naming how many bytes
  // had come, Internal for another errno.
  absl::Status ReadExactly(char* dst, size_t n, absl::Time first_byte_deadline, absl::Time deadline,
                           absl::Duration stall = absl::InfiniteDuration());
  // Reads `n` bytes into *out: up to `allocate_first` bytes allocated at
  // once, the rest grown (doubling) as they arrive, so a length announced by
  // an untrusted peer costs nothing before its bytes come.
  absl::Status ReadInto(std::string* out, size_t n, absl::Time deadline,
                        absl::Duration stall = absl::InfiniteDuration(),
                        size_t allocate_first = size_t{4} << 20);

  // Bytes read from the socket but not returned yet.
  size_t buffered() const { return end_ - begin_; }

 private:
  // Up to `max` bytes into `dst` (from the buffer, else one recv, straight
  // into `dst` when it is larger than the buffer), waiting until `until`.
  // Unavailable at EOF, DeadlineExceeded at `until`.
  absl::StatusOr<size_t> ReadSome(char* dst, size_t max, absl::Time until);

  int fd_;
  char buffer_[64 * 1024];
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_DATA_SOCKET_FRAMES_H_
