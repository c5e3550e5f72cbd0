// What agents' data planes (data_plane.h) say to each other over UCX for a
// Pull (a Fetch: the block's owner sends it), a Push and a Call, and the tags
// they travel with.
//
// Tag layout (64 bits): the top 8 bits are the kind of message, the low 56
// bits the request id of a reply (0 in a request):
//
//   kPushRequestTag      = 1 << 56        every Push request; the serving
//                                         threads of an agent receive this tag
//   PushReplyTag(id)     = 2 << 56 | id   the answer to request `id`, sent to
//                                         the requester
//   kCallRequestTag      = 3 << 56        every Call request (DataPlane::Call);
//                                         the call threads receive this tag
//   CallReplyTag(id)     = 4 << 56 | id   the answer to Call `id`
//   kFetchRequestTag     = 5 << 56        every Fetch request (a Pull's); the
//                                         fetch threads receive this tag
//   FetchReplyTag(id)    = 6 << 56 | id   whether Fetch `id` is served
//   FetchDataTag(id)     = 7 << 56 | id   then its bytes, straight from the
//                                         owner's pool into the requester's
//
// A reply's tag names its request, so a requester receives exactly its own
// answer while other Pushes of the same process wait for theirs. Request ids
// come from a per-process counter (56 bits never wrap); one agent is one
// process, so an id is unique among the replies a data plane can receive.
//
// Encoding: our own compact little-endian binary, not protobuf: a handful of
// fixed fields between agents of one build, where a schema buys nothing; a
// version byte makes anything else a clear error instead of a misreading.
//
//   PushRequest: u8 version (1), u64 request id, 24 B BlockRef (its Encode),
//                u64 size, i64 owner pid, u64 timeout in ms, then the
//                requester's node id (the rest of the message).
//   PushReply:   u8 version (1), u8 absl::StatusCode (0: OK), then the new
//                block's 24 B BlockRef (OK) or the error's message (the rest).
//   CallRequest: u8 version (1), u64 request id, u64 timeout in ms, u32
//                length of the requester's node id, the node id, then the
//                payload (the rest).
//   CallReply:   u8 version (1), u8 absl::StatusCode, then the answer (OK) or
//                the error's message (the rest).
//   FetchRequest: u8 version (1), u64 request id, 24 B BlockRef, u64 size,
//                u64 timeout in ms, then the requester's node id (the rest).
//   FetchReply:  u8 version (1), u8 absl::StatusCode, then the error's
//                message, or (OK) the data itself when it is at most
//                kInlineFetchBytes, else nothing: the data follows alone
//                with FetchDataTag, to be received straight into the block.
//   FetchData:   the first `size` bytes of the block, nothing else.
#ifndef DRAGON_AGENT_DATA_PLANE_MESSAGES_H_
#define DRAGON_AGENT_DATA_PLANE_MESSAGES_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/buddy_allocator.h"

namespace dragon::agent::data_plane_messages {

inline constexpr int kKindShift = 56;
inline constexpr uint64_t kRequestIdMask = (uint64_t{1} << kKindShift) - 1;
inline constexpr uint64_t kPushRequestTag = uint64_t{1} << kKindShift;
inline constexpr uint64_t PushReplyTag(uint64_t request_id) {
  return (uint64_t{2} << kKindShift) | (request_id & kRequestIdMask);
}

inline constexpr uint64_t kCallRequestTag = uint64_t{3} << kKindShift;
inline constexpr uint64_t CallReplyTag(uint64_t request_id) {
  return (uint64_t{4} << kKindShift) | (request_id & kRequestIdMask);
}

inline constexpr uint64_t kFetchRequestTag = uint64_t{5} << kKindShift;
inline constexpr uint64_t FetchReplyTag(uint64_t request_id) {
  return (uint64_t{6} << kKindShift) | (request_id & kRequestIdMask);
}
inline constexpr uint64_t FetchDataTag(uint64_t request_id) {
  return (uint64_t{7} << kKindShift) | (request_id & kRequestIdMask);
}

// A request id for the next Push, Call or Fetch of this process (never 0).
uint64_t NextRequestId();

// "Pull `size` bytes of block `ref` of my pool (I am node `node_id`) into a
// new block of yours owned by `owner`, within `timeout`."
struct PushRequest {
  uint64_t request_id = 0;
  std::string node_id;
  common::BlockRef ref;
  uint64_t size = 0;
  pid_t owner = 0;
  absl::Duration timeout;  // whole milliseconds on the wire
};

std::string EncodePushRequest(const PushRequest& request);
// InvalidArgument describing what is wrong with `bytes` (short, another
// version, no node id).
absl::StatusOr<PushRequest> DecodePushRequest(absl::string_view bytes);

// The answer: the new block, or why not (code and message).
std::string EncodePushReply(const absl::StatusOr<common::BlockRef>& result);
// The reply's block or its error as sent; InvalidArgument (saying the reply
// is malformed) when `bytes` is not a reply.
absl::StatusOr<common::BlockRef> DecodePushReply(absl::string_view bytes);

// "Answer `payload` (I am node `node_id`) within `timeout`."
struct CallRequest {
  uint64_t request_id = 0;
  std::string node_id;
  absl::Duration timeout;  // whole milliseconds on the wire
  std::string payload;
};

std::string EncodeCallRequest(const CallRequest& request);
// InvalidArgument describing what is wrong with `bytes`.
absl::StatusOr<CallRequest> DecodeCallRequest(absl::string_view bytes);

std::string EncodeCallReply(const absl::StatusOr<std::string>& result);
// The answer or its error as sent; InvalidArgument for a malformed reply.
absl::StatusOr<std::string> DecodeCallReply(absl::string_view bytes);

// "Send me (node `node_id`) the first `size` bytes of block `ref` of your
// pool within `timeout`." A Pull of another node's block is this request;
// the block's owner sends the bytes (two-sided: see data_plane_fetch.cc for
// why not a UCX Get).
struct FetchRequest {
  uint64_t request_id = 0;
  std::string node_id;
  common::BlockRef ref;
  uint64_t size = 0;
  absl::Duration timeout;  // whole milliseconds on the wire
};

// Data up to this size travels in the reply (one message less; UCX copies a
// message this small through its buffers anyway).
inline constexpr uint64_t kInlineFetchBytes = 8 << 10;

std::string EncodeFetchRequest(const FetchRequest& request);
// InvalidArgument describing what is wrong with `bytes`.
absl::StatusOr<FetchRequest> DecodeFetchRequest(absl::string_view bytes);

// The reply to a Fetch: `data` (empty: it follows with FetchDataTag) or why
// not, code and message.
std::string EncodeFetchReply(const absl::StatusOr<absl::string_view>& data);
// The data in the reply (empty: it follows with FetchDataTag) or the error
// as sent; InvalidArgument (saying the reply is malformed) when `bytes` is
// not a reply. The view points into `bytes`.
absl::StatusOr<absl::string_view> DecodeFetchReply(absl::string_view bytes);

}  // namespace dragon::agent::data_plane_messages

#endif  // DRAGON_AGENT_DATA_PLANE_MESSAGES_H_
