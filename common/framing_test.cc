#include "common/framing.h"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

namespace dragon::common {
namespace {

std::vector<Frame> Drain(FrameDecoder* d) {
  std::vector<Frame> out;
  while (auto f = d->Next()) out.push_back(std::move(*f));
  return out;
}

TEST_CASE("a frame is length, type, task id, body, little-endian") {
  const std::string f = EncodeFrame(FrameType::kResult, 0x0102030405060708ULL, "abc");
  REQUIRE(f.size() == kFrameHeaderSize + 3);
  // length counts the 9 bytes of type + task id plus the body.
  CHECK(f.substr(0, 4) == std::string("\x0c\x00\x00\x00", 4));
  CHECK(f[4] == 3);
  CHECK(f.substr(5, 8) == std::string("\x08\x07\x06\x05\x04\x03\x02\x01", 8));
  CHECK(f.substr(13) == "abc");
}

TEST_CASE("a whole frame decodes to what was encoded") {
  FrameDecoder d(1 << 20);
  std::string body(1000, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>(i * 7);
  REQUIRE(d.Feed(EncodeFrame(FrameType::kAppException, 42, body)).ok());
  auto frames = Drain(&d);
  REQUIRE(frames.size() == 1);
  CHECK(frames[0].type == static_cast<uint8_t>(FrameType::kAppException));
  CHECK(frames[0].task_id == 42);
  CHECK(frames[0].body == body);
  CHECK(d.buffered_bytes() == 0);
}

TEST_CASE("partial reads: a frame fed one byte at a time appears only when complete") {
  FrameDecoder d(1 << 20);
  const std::string f = EncodeFrame(FrameType::kReady, 0, "pid 12 python 3.11");
  for (size_t i = 0; i + 1 < f.size(); ++i) {
    REQUIRE(d.Feed(f.data() + i, 1).ok());
    CHECK_FALSE(d.Next().has_value());
  }
  REQUIRE(d.Feed(f.data() + f.size() - 1, 1).ok());
  auto frame = d.Next();
  REQUIRE(frame.has_value());
  CHECK(frame->body == "pid 12 python 3.11");
  CHECK_FALSE(d.Next().has_value());
}

TEST_CASE("several frames in one read, the last one split across reads") {
  FrameDecoder d(1 << 20);
  std::string stream;
  for (uint64_t id = 1; id <= 5; ++id) {
    AppendFrame(&stream, FrameType::kResult, id, std::string(id * 10, 'x'));
  }
  const size_t cut = stream.size() - 7;
  REQUIRE(d.Feed(stream.data(), cut).ok());
  auto first = Drain(&d);
  REQUIRE(first.size() == 4);
  for (size_t i = 0; i < first.size(); ++i) {
    CHECK(first[i].task_id == i + 1);
    CHECK(first[i].body == std::string((i + 1) * 10, 'x'));
  }
  CHECK(d.buffered_bytes() > 0);
  REQUIRE(d.Feed(stream.data() + cut, stream.size() - cut).ok());
  auto rest = Drain(&d);
  REQUIRE(rest.size() == 1);
  CHECK(rest[0].task_id == 5);
  CHECK(rest[0].body == std::string(50, 'x'));
}

TEST_CASE("an empty body is a valid frame") {
  FrameDecoder d(64);
  REQUIRE(d.Feed(EncodeFrame(FrameType::kResult, 7, "")).ok());
  auto f = d.Next();
  REQUIRE(f.has_value());
  CHECK(f->task_id == 7);
  CHECK(f->body.empty());
}

TEST_CASE("a length above the maximum is rejected with the length in the message") {
  FrameDecoder d(100);
  const std::string ok = EncodeFrame(FrameType::kResult, 1, std::string(91, 'a'));  // length 100
  const std::string big = EncodeFrame(FrameType::kResult, 2, std::string(92, 'b'));  // length 101
  // Only the header of the oversized frame is needed to reject it.
  absl::Status s = d.Feed(ok + big.substr(0, 4));
  REQUIRE_FALSE(s.ok());
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK_THAT(std::string(s.message()), Catch::Contains("frame length 101 bytes") &&
                                           Catch::Contains("maximum of 100 bytes"));
  // The stream cannot be resynchronised: the decoder stays failed.
  CHECK_FALSE(d.Feed("more").ok());
  CHECK_FALSE(d.status().ok());
}

TEST_CASE("a length below type + task id is rejected") {
  FrameDecoder d(100);
  const std::string bad("\x03\x00\x00\x00\x01\x02\x03", 7);
  absl::Status s = d.Feed(bad);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(std::string(s.message()), Catch::Contains("frame length 3 bytes"));
}

TEST_CASE("many small frames through a long stream do not leak buffer") {
  FrameDecoder d(1 << 10);
  uint64_t next = 1;
  for (int round = 0; round < 1000; ++round) {
    std::string chunk;
    AppendFrame(&chunk, FrameType::kResult, next, "r");
    AppendFrame(&chunk, FrameType::kResult, next + 1, "s");
    // Leave half a frame behind every round.
    std::string third = EncodeFrame(FrameType::kResult, next + 2, "t");
    static std::string carry;
    std::string feed = carry + chunk + third.substr(0, 6);
    carry = third.substr(6);
    REQUIRE(d.Feed(feed).ok());
    auto frames = Drain(&d);
    // First round: 2 frames; later rounds also complete the previous round's third.
    REQUIRE(frames.size() == (round == 0 ? 2u : 3u));
    CHECK(frames.back().task_id == next + 1);
    next += 3;
  }
  CHECK(d.buffered_bytes() == 6);
}

TEST_CASE("RUN frames carry cwd and payload") {
  std::string out;
  const std::string payload("\x00\x01payload\xff", 10);
  AppendRunFrame(&out, 99, "/home/u/work", payload);
  FrameDecoder d(1 << 20);
  REQUIRE(d.Feed(out).ok());
  auto f = d.Next();
  REQUIRE(f.has_value());
  CHECK(f->type == static_cast<uint8_t>(FrameType::kRun));
  CHECK(f->task_id == 99);
  RunBody run;
  REQUIRE(ParseRunBody(f->body, &run).ok());
  CHECK(run.cwd == "/home/u/work");
  CHECK(run.payload == payload);
}

TEST_CASE("a RUN body whose cwd length overruns is rejected") {
  RunBody run;
  std::string body("\x10\x00\x00\x00/tmp", 8);
  absl::Status s = ParseRunBody(body, &run);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(std::string(s.message()), Catch::Contains("cwd length 16"));
  CHECK_FALSE(ParseRunBody("ab", &run).ok());
}

TEST_CASE("frame type names") {
  CHECK(FrameTypeName(1) == "READY");
  CHECK(FrameTypeName(4) == "APP_EXCEPTION");
  CHECK(FrameTypeName(17) == "type 17");
}

}  // namespace
}  // namespace dragon::common
