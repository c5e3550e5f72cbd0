// What the ShmChannel tests share (shm_channel_test.cc, the ring and its
// large messages; shm_channel_inline_test.cc, small messages in the slots):
// the test-only way into the channel and message helpers.
#ifndef DRAGON_COMMON_SHM_CHANNEL_TEST_UTIL_H_
#define DRAGON_COMMON_SHM_CHANNEL_TEST_UTIL_H_

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

#include "common/shm_channel.h"
#include "common/shm_pool_test_util.h"

namespace dragon::common {

// The test-only way in: a process that dies holding the channel's lock, or in
// the middle of a send or a receive (the states Repair finishes).
class ShmChannelTestPeer {
 public:
  static void LockAndDie(ShmChannel& c) {
    if (c.Lock().ok()) _exit(0);
    _exit(1);
  }
  // Writes the slot and hands the block to the creator, then dies before the commit.
  static void DieBeforeSendCommit(ShmPool& pool, ShmChannel& c, const std::string& text) {
    BlockRef block = *pool.Allocate(text.size());
    memcpy(pool.Resolve(block)->data(), text.data(), text.size());
    if (!c.Lock().ok() || !c.StageSend(block, text.size()).ok()) _exit(1);
    _exit(0);
  }
  // Copies a small message into the slot at tail, then dies before the commit.
  static void DieBeforeInlineSendCommit(ShmChannel& c, const std::string& text) {
    if (!c.Lock().ok()) _exit(1);
    c.StageInline(absl::MakeConstSpan(text));
    _exit(0);
  }
  // Takes the oldest message over and clears its slot, then dies before the commit.
  static void DieBeforeReceiveCommit(ShmChannel& c) {
    ShmMessage message;
    std::string small;
    if (!c.Lock().ok() || !c.TakeHead(message, small).ok()) _exit(1);
    _exit(0);
  }
};

namespace shm_pool_test {

inline constexpr uint64_t kMiB = 1 << 20;
inline const absl::Duration kLong = absl::Seconds(20);

inline ShmChannel MustOpen(ShmPool& pool, BlockRef ref) {
  absl::StatusOr<ShmChannel> c = ShmChannel::Open(pool, ref);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return *std::move(c);
}

inline ShmChannel MustCreateChannel(ShmPool& pool, uint32_t capacity) {
  absl::StatusOr<BlockRef> ref = ShmChannel::Create(pool, capacity);
  INFO(ref.status().ToString());
  REQUIRE(ref.ok());
  return MustOpen(pool, *ref);
}

inline std::string Text(uint64_t size, uint64_t serial) {
  std::string s(size, '\0');
  Fill(absl::MakeSpan(s), 7, serial);
  return s;
}

inline absl::Span<const char> Bytes(const std::string& s) { return absl::MakeConstSpan(s); }

// A message with a header (producer, serial) and a pattern whose length
// varies: 8 to 8 + `spread` - 1 bytes (the default mixes inline and block
// messages; a spread up to ShmChannel::kInlineBytes - 7 keeps them all inline).
inline std::string Numbered(uint32_t producer, uint32_t serial, uint32_t spread = 3000) {
  std::string s(8 + (producer * 977 + serial * 131) % spread, '\0');
  memcpy(&s[0], &producer, 4);
  memcpy(&s[4], &serial, 4);
  Fill(absl::MakeSpan(s).subspan(8), producer, serial);
  return s;
}

inline bool Parse(std::string& s, uint32_t* producer, uint32_t* serial, uint32_t spread = 3000) {
  if (s.size() < 8) return false;
  memcpy(producer, &s[0], 4);
  memcpy(serial, &s[4], 4);
  return s == Numbered(*producer, *serial, spread);
}

}  // namespace shm_pool_test
}  // namespace dragon::common

#endif  // DRAGON_COMMON_SHM_CHANNEL_TEST_UTIL_H_
