#include "common/framing.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace dragon::common {
namespace {

void PutU32(std::string* out, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out->append(b, 4);
}

void PutU64(std::string* out, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out->append(b, 8);
}

uint32_t GetU32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8) |
         (static_cast<uint32_t>(u[2]) << 16) | (static_cast<uint32_t>(u[3]) << 24);
}

uint64_t GetU64(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | u[i];
  return v;
}

}  // namespace

std::string FrameTypeName(uint8_t type) {
  switch (static_cast<FrameType>(type)) {
    case FrameType::kReady:
      return "READY";
    case FrameType::kRun:
      return "RUN";
    case FrameType::kResult:
      return "RESULT";
    case FrameType::kAppException:
      return "APP_EXCEPTION";
    case FrameType::kResultTooLarge:
      return "RESULT_TOO_LARGE";
    case FrameType::kRunEnv:
      return "RUN_ENV";
  }
  return absl::StrCat("type ", type);
}

void AppendFrame(std::string* out, FrameType type, uint64_t task_id, absl::string_view body) {
  out->reserve(out->size() + kFrameHeaderSize + body.size());
  PutU32(out, static_cast<uint32_t>(kMinFrameLength + body.size()));
  out->push_back(static_cast<char>(type));
  PutU64(out, task_id);
  out->append(body.data(), body.size());
}

std::string EncodeFrame(FrameType type, uint64_t task_id, absl::string_view body) {
  std::string out;
  AppendFrame(&out, type, task_id, body);
  return out;
}

void AppendRunFrame(std::string* out, uint64_t task_id, absl::string_view cwd,
                    absl::string_view payload) {
  const size_t body_size = 4 + cwd.size() + payload.size();
  out->reserve(out->size() + kFrameHeaderSize + body_size);
  PutU32(out, static_cast<uint32_t>(kMinFrameLength + body_size));
  out->push_back(static_cast<char>(FrameType::kRun));
  PutU64(out, task_id);
  PutU32(out, static_cast<uint32_t>(cwd.size()));
  out->append(cwd.data(), cwd.size());
  out->append(payload.data(), payload.size());
}

void AppendRunEnvFrame(std::string* out, uint64_t task_id,
                       const std::vector<std::pair<std::string, std::string>>& env,
                       absl::string_view cwd, absl::string_view payload) {
  size_t env_size = 0;
  for (const auto& [k, v] : env) env_size += k.size() + 1 + v.size() + 1;
  const size_t body_size = 4 + env_size + 4 + cwd.size() + payload.size();
  out->reserve(out->size() + kFrameHeaderSize + body_size);
  PutU32(out, static_cast<uint32_t>(kMinFrameLength + body_size));
  out->push_back(static_cast<char>(FrameType::kRunEnv));
  PutU64(out, task_id);
  PutU32(out, static_cast<uint32_t>(env_size));
  for (const auto& [k, v] : env) {
    out->append(k);
    out->push_back('=');
    out->append(v);
    out->push_back('\0');
  }
  PutU32(out, static_cast<uint32_t>(cwd.size()));
  out->append(cwd.data(), cwd.size());
  out->append(payload.data(), payload.size());
}

absl::Status ParseRunBody(absl::string_view body, RunBody* out) {
  if (body.size() < 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("RUN body of ", body.size(), " bytes is shorter than its 4-byte cwd length"));
  }
  const uint32_t cwd_len = GetU32(body.data());
  if (cwd_len > body.size() - 4) {
    return absl::InvalidArgumentError(absl::StrCat("RUN body: cwd length ", cwd_len, " exceeds the ",
                                                   body.size() - 4, " bytes that follow it"));
  }
  out->cwd = body.substr(4, cwd_len);
  out->payload = body.substr(4 + cwd_len);
  return absl::OkStatus();
}

FrameDecoder::FrameDecoder(uint32_t max_frame_length) : max_frame_length_(max_frame_length) {}

absl::Status FrameDecoder::Feed(const char* data, size_t size) {
  if (!status_.ok()) return status_;
  // Drop what Next() already returned before growing the buffer, so a long
  // stream of small frames does not accumulate.
  if (consumed_ == buffer_.size()) {
    buffer_.clear();
    scan_ = consumed_ = 0;
  } else if (consumed_ > 0 && consumed_ >= buffer_.size() / 2) {
    buffer_.erase(0, consumed_);
    scan_ -= consumed_;
    consumed_ = 0;
  }
  buffer_.append(data, size);
  // Validate every header that is now complete, not only the first: a bad
  // length must be reported when it arrives, not when the caller gets to it.
  while (buffer_.size() - scan_ >= 4) {
    const uint32_t length = GetU32(buffer_.data() + scan_);
    if (length > max_frame_length_) {
      status_ = absl::ResourceExhaustedError(absl::StrCat(
          "frame length ", length, " bytes exceeds the maximum of ", max_frame_length_, " bytes"));
      return status_;
    }
    if (length < kMinFrameLength) {
      status_ = absl::DataLossError(absl::StrCat("frame length ", length,
                                                 " bytes is below the minimum of ",
                                                 kMinFrameLength, " (type + task id)"));
      return status_;
    }
    const size_t frame_end = scan_ + 4 + static_cast<size_t>(length);
    if (frame_end > buffer_.size()) {
      // Partial frame: make room for all of it once instead of regrowing on
      // every read of a large result.
      buffer_.reserve(frame_end);
      break;
    }
    scan_ = frame_end;
  }
  return absl::OkStatus();
}

std::optional<Frame> FrameDecoder::Next() {
  if (consumed_ >= scan_) return std::nullopt;  // no complete, validated frame
  const char* p = buffer_.data() + consumed_;
  const uint32_t length = GetU32(p);
  Frame frame;
  frame.type = static_cast<uint8_t>(p[4]);
  frame.task_id = GetU64(p + 5);
  frame.body.assign(p + kFrameHeaderSize, length - kMinFrameLength);
  consumed_ += 4 + static_cast<size_t>(length);
  return frame;
}

}  // namespace dragon::common
