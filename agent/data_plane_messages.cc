#include "agent/data_plane_messages.h"

#include <atomic>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dragon::agent::data_plane_messages {
namespace {

constexpr uint8_t kVersion = 1;
constexpr size_t kReplyHeaderBytes = 2;  // version, status code

void PutU64(std::string* out, uint64_t value) {
  for (int b = 0; b < 8; ++b) out->push_back(static_cast<char>((value >> (8 * b)) & 0xff));
}

// Reads 8 bytes at `*at` and moves past them; the caller checked the length.
uint64_t TakeU64(absl::string_view bytes, size_t* at) {
  uint64_t value = 0;
  for (int b = 0; b < 8; ++b) {
    value |= uint64_t{static_cast<unsigned char>(bytes[*at + b])} << (8 * b);
  }
  *at += 8;
  return value;
}

// Push and Fetch requests share their layout: version, request id, ref,
// size, the owner pid (Push only), timeout in ms, then the requester's node
// id (the rest).
struct BlockRequestFields {
  uint64_t request_id = 0;
  common::BlockRef ref;
  uint64_t size = 0;
  pid_t owner = 0;  // Push only
  absl::Duration timeout;
  std::string node_id;
};

constexpr size_t BlockRequestFixedBytes(bool with_owner) {
  return 1 + 8 + common::BlockRef::kEncodedSize + 8 + (with_owner ? 8 : 0) + 8;
}

std::string EncodeBlockRequest(const BlockRequestFields& f, bool with_owner) {
  std::string out;
  out.reserve(BlockRequestFixedBytes(with_owner) + f.node_id.size());
  out.push_back(static_cast<char>(kVersion));
  PutU64(&out, f.request_id);
  out += f.ref.Encode();
  PutU64(&out, f.size);
  if (with_owner) PutU64(&out, static_cast<uint64_t>(static_cast<int64_t>(f.owner)));
  const int64_t timeout_ms = absl::ToInt64Milliseconds(f.timeout);
  PutU64(&out, static_cast<uint64_t>(timeout_ms < 0 ? 0 : timeout_ms));
  out += f.node_id;
  return out;
}

// `what` ("push request", "fetch request") names the message in errors.
absl::StatusOr<BlockRequestFields> DecodeBlockRequest(absl::string_view bytes, bool with_owner,
                                                      absl::string_view what) {
  const size_t fixed = BlockRequestFixedBytes(with_owner);
  if (bytes.size() <= fixed) {
    return absl::InvalidArgumentError(absl::StrCat("malformed ", what, ": ", bytes.size(),
                                                    " bytes, at least ", fixed + 1,
                                                    " expected (with a node id)"));
  }
  if (static_cast<uint8_t>(bytes[0]) != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " of version ", static_cast<int>(static_cast<uint8_t>(bytes[0])),
                     ", this agent speaks version ", kVersion));
  }
  BlockRequestFields f;
  size_t at = 1;
  f.request_id = TakeU64(bytes, &at);
  absl::StatusOr<common::BlockRef> ref =
      common::BlockRef::Decode(bytes.substr(at, common::BlockRef::kEncodedSize));
  if (!ref.ok()) return ref.status();
  f.ref = *ref;
  at += common::BlockRef::kEncodedSize;
  f.size = TakeU64(bytes, &at);
  if (with_owner) f.owner = static_cast<pid_t>(static_cast<int64_t>(TakeU64(bytes, &at)));
  f.timeout = absl::Milliseconds(static_cast<int64_t>(TakeU64(bytes, &at)));
  f.node_id = std::string(bytes.substr(at));
  return f;
}

}  // namespace

uint64_t NextRequestId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed) & kRequestIdMask;
}

std::string EncodePushRequest(const PushRequest& request) {
  return EncodeBlockRequest({request.request_id, request.ref, request.size, request.owner,
                             request.timeout, request.node_id},
                            /*with_owner=*/true);
}

absl::StatusOr<PushRequest> DecodePushRequest(absl::string_view bytes) {
  absl::StatusOr<BlockRequestFields> f = DecodeBlockRequest(bytes, true, "push request");
  if (!f.ok()) return f.status();
  PushRequest request;
  request.request_id = f->request_id;
  request.node_id = std::move(f->node_id);
  request.ref = f->ref;
  request.size = f->size;
  request.owner = f->owner;
  request.timeout = f->timeout;
  return request;
}

std::string EncodePushReply(const absl::StatusOr<common::BlockRef>& result) {
  std::string out;
  out.push_back(static_cast<char>(kVersion));
  out.push_back(static_cast<char>(result.status().code()));
  if (result.ok()) {
    out += result->Encode();
  } else {
    out += std::string(result.status().message());
  }
  return out;
}

absl::StatusOr<common::BlockRef> DecodePushReply(absl::string_view bytes) {
  if (bytes.size() < kReplyHeaderBytes || static_cast<uint8_t>(bytes[0]) != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed push reply (", bytes.size(), " bytes, version ",
                     bytes.empty() ? -1 : static_cast<int>(static_cast<uint8_t>(bytes[0])), ")"));
  }
  const int code = static_cast<uint8_t>(bytes[1]);
  const absl::string_view rest = bytes.substr(kReplyHeaderBytes);
  if (code == 0) {
    absl::StatusOr<common::BlockRef> ref = common::BlockRef::Decode(rest);
    if (!ref.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed push reply: ", ref.status().message()));
    }
    return *ref;
  }
  if (code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed push reply: unknown status code ", code, ": ", rest));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), rest);
}

namespace {

constexpr size_t kCallFixedBytes = 1 + 8 + 8 + 4;  // version, id, timeout, node id length

// The status a reply's code byte and message stand for; InvalidArgument
// (naming `what`) for a code absl does not have.
absl::Status ReplyStatus(int code, absl::string_view message, absl::string_view what) {
  if (code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed ", what, ": unknown status code ", code, ": ", message));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), message);
}

}  // namespace

std::string EncodeCallRequest(const CallRequest& request) {
  std::string out;
  out.reserve(kCallFixedBytes + request.node_id.size() + request.payload.size());
  out.push_back(static_cast<char>(kVersion));
  PutU64(&out, request.request_id);
  const int64_t timeout_ms = absl::ToInt64Milliseconds(request.timeout);
  PutU64(&out, static_cast<uint64_t>(timeout_ms < 0 ? 0 : timeout_ms));
  const uint32_t id_bytes = static_cast<uint32_t>(request.node_id.size());
  for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>((id_bytes >> (8 * b)) & 0xff));
  out += request.node_id;
  out += request.payload;
  return out;
}

absl::StatusOr<CallRequest> DecodeCallRequest(absl::string_view bytes) {
  if (bytes.size() < kCallFixedBytes || static_cast<uint8_t>(bytes[0]) != kVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed call request (", bytes.size(), " bytes, version ",
        bytes.empty() ? -1 : static_cast<int>(static_cast<uint8_t>(bytes[0])), ")"));
  }
  CallRequest request;
  size_t at = 1;
  request.request_id = TakeU64(bytes, &at);
  request.timeout = absl::Milliseconds(static_cast<int64_t>(TakeU64(bytes, &at)));
  uint32_t id_bytes = 0;
  for (int b = 0; b < 4; ++b) {
    id_bytes |= uint32_t{static_cast<unsigned char>(bytes[at + b])} << (8 * b);
  }
  at += 4;
  if (id_bytes == 0 || bytes.size() - at < id_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("malformed call request: node id of ",
                                                    id_bytes, " bytes in ", bytes.size()));
  }
  request.node_id = std::string(bytes.substr(at, id_bytes));
  request.payload = std::string(bytes.substr(at + id_bytes));
  return request;
}

std::string EncodeCallReply(const absl::StatusOr<std::string>& result) {
  std::string out;
  const absl::string_view rest = result.ok() ? absl::string_view(*result) : result.status().message();
  out.reserve(kReplyHeaderBytes + rest.size());
  out.push_back(static_cast<char>(kVersion));
  out.push_back(static_cast<char>(result.status().code()));
  out.append(rest.data(), rest.size());
  return out;
}

absl::StatusOr<std::string> DecodeCallReply(absl::string_view bytes) {
  if (bytes.size() < kReplyHeaderBytes || static_cast<uint8_t>(bytes[0]) != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed call reply (", bytes.size(), " bytes, version ",
                     bytes.empty() ? -1 : static_cast<int>(static_cast<uint8_t>(bytes[0])), ")"));
  }
  const int code = static_cast<uint8_t>(bytes[1]);
  const absl::string_view rest = bytes.substr(kReplyHeaderBytes);
  if (code == 0) return std::string(rest);
  return ReplyStatus(code, rest, "call reply");
}

std::string EncodeFetchRequest(const FetchRequest& request) {
  return EncodeBlockRequest(
      {request.request_id, request.ref, request.size, 0, request.timeout, request.node_id},
      /*with_owner=*/false);
}

absl::StatusOr<FetchRequest> DecodeFetchRequest(absl::string_view bytes) {
  absl::StatusOr<BlockRequestFields> f = DecodeBlockRequest(bytes, false, "fetch request");
  if (!f.ok()) return f.status();
  FetchRequest request;
  request.request_id = f->request_id;
  request.node_id = std::move(f->node_id);
  request.ref = f->ref;
  request.size = f->size;
  request.timeout = f->timeout;
  return request;
}

std::string EncodeFetchReply(const absl::StatusOr<absl::string_view>& data) {
  const absl::string_view rest = data.ok() ? *data : data.status().message();
  std::string out;
  out.reserve(kReplyHeaderBytes + rest.size());
  out.push_back(static_cast<char>(kVersion));
  out.push_back(static_cast<char>(data.status().code()));
  out.append(rest.data(), rest.size());
  return out;
}

absl::StatusOr<absl::string_view> DecodeFetchReply(absl::string_view bytes) {
  if (bytes.size() < kReplyHeaderBytes || static_cast<uint8_t>(bytes[0]) != kVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "malformed fetch reply (", bytes.size(), " bytes, version ",
        bytes.empty() ? -1 : static_cast<int>(static_cast<uint8_t>(bytes[0])), ")"));
  }
  const int code = static_cast<uint8_t>(bytes[1]);
  const absl::string_view rest = bytes.substr(kReplyHeaderBytes);
  if (code == 0) return rest;
  return ReplyStatus(code, rest, "fetch reply");
}

}  // namespace dragon::agent::data_plane_messages
