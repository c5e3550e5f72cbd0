// The frame format of the pipes between dragon-agent and its Python workers
// (docs/INTERFACES.md, "Worker pipe protocol"):
//
//   u32 length (little-endian, counts the bytes after itself)
//   u8  type
//   u64 task_id (little-endian)
//   length - 9 bytes of body
//
// The Python side of the same format is parsl_plugin/dragon_parsl/worker.py.
#ifndef DRAGON_COMMON_FRAMING_H_
#define DRAGON_COMMON_FRAMING_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace dragon::common {

enum class FrameType : uint8_t {
  kReady = 1,         // worker -> agent: pid and Python version, task_id 0
  kRun = 2,           // agent -> worker: u32 cwd_len, cwd, Parsl payload
  kResult = 3,        // worker -> agent: serialized return value
  kAppException = 4,  // worker -> agent: serialized RemoteExceptionWrapper
  // worker -> agent: the task's result (or exception) would be larger than
  // $DRAGON_MAX_RESULT_BYTES and was not sent; body = its size, in decimal.
  kResultTooLarge = 5,
  // agent -> worker: a RUN with environment variables the worker sets for
  // the task's duration (its grant: GPUs, MPI placement): u32 env_len, env
  // ("NAME=VALUE\0" each), then a RUN body.
  kRunEnv = 6,
};

// Name for logs and error messages ("READY", ..., or "type 17").
std::string FrameTypeName(uint8_t type);

// Bytes before the body: u32 length + u8 type + u64 task_id.
inline constexpr size_t kFrameHeaderSize = 13;
// The smallest valid length field: type + task_id, empty body.
inline constexpr uint32_t kMinFrameLength = 9;

struct Frame {
  uint8_t type = 0;  // a FrameType value; kept raw so unknown types can be reported
  uint64_t task_id = 0;
  std::string body;
};

// Appends one frame to *out. The caller guarantees body.size() fits the
// u32 length field (anything we send is bounded far below 4 GiB by gRPC).
void AppendFrame(std::string* out, FrameType type, uint64_t task_id, absl::string_view body);
std::string EncodeFrame(FrameType type, uint64_t task_id, absl::string_view body);

// A RUN frame built in one allocation: the payload can be hundreds of MiB,
// so it is copied exactly once, straight into the frame.
void AppendRunFrame(std::string* out, uint64_t task_id, absl::string_view cwd,
                    absl::string_view payload);

// A RUN_ENV frame: `env` set for the task, then what a RUN frame holds.
void AppendRunEnvFrame(std::string* out, uint64_t task_id,
                       const std::vector<std::pair<std::string, std::string>>& env,
                       absl::string_view cwd, absl::string_view payload);

struct RunBody {
  absl::string_view cwd;
  absl::string_view payload;
};
// Splits a RUN body into cwd and payload (views into `body`).
absl::Status ParseRunBody(absl::string_view body, RunBody* out);

// Incremental decoder for a byte stream read from a nonblocking fd: feed it
// whatever read() returned, then take complete frames out with Next().
// A length field outside [kMinFrameLength, max_frame_length] is an error
// naming the length; after an error the stream cannot be resynchronised, so
// the decoder stays failed and the caller must drop the connection.
class FrameDecoder {
 public:
  explicit FrameDecoder(uint32_t max_frame_length);

  // Appends bytes and validates every header that became complete.
  absl::Status Feed(const char* data, size_t size);
  absl::Status Feed(absl::string_view bytes) { return Feed(bytes.data(), bytes.size()); }

  // Removes and returns the next complete frame, if any.
  std::optional<Frame> Next();

  // Bytes received but not yet returned as frames (a partial frame at EOF
  // means the peer died mid-write).
  size_t buffered_bytes() const { return buffer_.size() - consumed_; }
  const absl::Status& status() const { return status_; }
  uint32_t max_frame_length() const { return max_frame_length_; }

 private:
  uint32_t max_frame_length_;
  std::string buffer_;
  size_t consumed_ = 0;  // bytes at the front of buffer_ already returned
  size_t scan_ = 0;      // end of the last complete frame whose header was validated
  absl::Status status_;
};

}  // namespace dragon::common

#endif  // DRAGON_COMMON_FRAMING_H_
