#include "common/data_socket_frames.h"

#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>
#include <thread>

#include "absl/strings/match.h"

namespace dragon::common {
namespace {

// A connected pair of Unix stream sockets, closed at the end.
struct SocketPair {
  SocketPair() { REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0); }
  ~SocketPair() {
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
  }
  void CloseWriter() {
    close(fds[0]);
    fds[0] = -1;
  }
  int fds[2] = {-1, -1};
};

const absl::Time kSoon = absl::InfiniteFuture();

TEST_CASE("request and reply headers round-trip") {
  const std::string req = EncodeDataRequestHeader(DataMethod::kChannel, 1500, 123456);
  REQUIRE(req.size() == kDataRequestHeaderSize);
  DataRequestHeader h;
  REQUIRE(DecodeDataRequestHeader(req.data(), kMaxDataBodyBytes, &h).ok());
  CHECK(h.method == static_cast<uint8_t>(DataMethod::kChannel));
  CHECK(h.timeout_ms == 1500);
  CHECK(h.body_size == 123456);

  const std::string rep = EncodeDataReplyHeader(absl::StatusCode::kResourceExhausted, 42);
  REQUIRE(rep.size() == kDataReplyHeaderSize);
  DataReplyHeader r;
  REQUIRE(DecodeDataReplyHeader(rep.data(), &r).ok());
  CHECK(r.code == absl::StatusCode::kResourceExhausted);
  CHECK(r.body_size == 42);
  CHECK(DataMethodName(3) == "Dict");
  CHECK(DataMethodName(99) == "method 99");
}

TEST_CASE("bad headers are refused naming what is wrong") {
  // A length below the header's own bytes: garbage.
  std::string short_len = EncodeDataRequestHeader(DataMethod::kDict, 0, 0);
  short_len[0] = 2;
  DataRequestHeader h;
  absl::Status s = DecodeDataRequestHeader(short_len.data(), kMaxDataBodyBytes, &h);
  CHECK(s.code() == absl::StatusCode::kDataLoss);
  CHECK(absl::StrContains(s.message(), "length 2"));

  // A body over the bound: refused before any of it is read.
  const std::string big = EncodeDataRequestHeader(DataMethod::kDict, 0, 5000);
  s = DecodeDataRequestHeader(big.data(), 4096, &h);
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(s.message(), "Dict request of 5000 bytes"));
  CHECK(absl::StrContains(s.message(), "maximum of 4096"));

  std::string bad_code = EncodeDataReplyHeader(absl::StatusCode::kOk, 0);
  bad_code[4] = static_cast<char>(200);
  DataReplyHeader r;
  CHECK(DecodeDataReplyHeader(bad_code.data(), &r).code() == absl::StatusCode::kDataLoss);
}

TEST_CASE("parts written gathered are read back exactly, small and larger than the buffer") {
  SocketPair p;
  const std::string small = "hello";
  std::string large(3 << 20, '\0');
  for (size_t i = 0; i < large.size(); ++i) large[i] = static_cast<char>(i * 7);
  std::thread writer([&] {
    const absl::string_view parts[] = {small, large, small};
    CHECK(WriteAllParts(p.fds[0], parts, 3, absl::Now() + absl::Seconds(30)).ok());
  });
  SocketReader reader(p.fds[1]);
  char got_small[5];
  REQUIRE(reader.ReadExactly(got_small, 5, kSoon, kSoon).ok());
  CHECK(std::string(got_small, 5) == small);
  std::string got_large;
  REQUIRE(reader.ReadInto(&got_large, large.size(), absl::Now() + absl::Seconds(30)).ok());
  CHECK(got_large == large);
  REQUIRE(reader.ReadExactly(got_small, 5, kSoon, kSoon).ok());
  CHECK(std::string(got_small, 5) == small);
  writer.join();
}

TEST_CASE("a body is grown as it arrives when less is allocated first") {
  SocketPair p;
  std::string body(5 << 20, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>(i * 13);
  std::thread writer([&] {
    const absl::string_view parts[] = {body};
    CHECK(WriteAllParts(p.fds[0], parts, 1, absl::Now() + absl::Seconds(30)).ok());
  });
  SocketReader reader(p.fds[1]);
  std::string got;
  REQUIRE(reader.ReadInto(&got, body.size(), absl::Now() + absl::Seconds(30),
                          absl::InfiniteDuration(), /*allocate_first=*/1000)
              .ok());
  CHECK(got == body);
  writer.join();
}

TEST_CASE("a peer that closes before a frame is Unavailable, in the middle of one DataLoss") {
  {
    SocketPair p;
    p.CloseWriter();
    SocketReader reader(p.fds[1]);
    char buf[9];
    CHECK(reader.ReadExactly(buf, 9, kSoon, kSoon).code() == absl::StatusCode::kUnavailable);
  }
  {
    SocketPair p;
    REQUIRE(write(p.fds[0], "abcd", 4) == 4);
    p.CloseWriter();
    SocketReader reader(p.fds[1]);
    char buf[9];
    absl::Status s = reader.ReadExactly(buf, 9, kSoon, kSoon);
    CHECK(s.code() == absl::StatusCode::kDataLoss);
    CHECK(absl::StrContains(s.message(), "after 4 of 9 bytes"));
  }
  {
    SocketPair p;
    REQUIRE(write(p.fds[0], "abcd", 4) == 4);
    p.CloseWriter();
    SocketReader reader(p.fds[1]);
    std::string body;
    absl::Status s = reader.ReadInto(&body, 100, kSoon);
    CHECK(s.code() == absl::StatusCode::kDataLoss);
    CHECK(absl::StrContains(s.message(), "after 4 of 100 bytes"));
  }
}

TEST_CASE("reads and writes end at their deadline or after a stall") {
  SocketPair p;
  SocketReader reader(p.fds[1]);
  char buf[4];
  // Nothing comes: the first byte's deadline.
  CHECK(reader.ReadExactly(buf, 4, absl::Now() + absl::Milliseconds(20), kSoon).code() ==
        absl::StatusCode::kDeadlineExceeded);
  // Part of a frame, then nothing: the stall bound.
  REQUIRE(write(p.fds[0], "ab", 2) == 2);
  absl::Status s = reader.ReadExactly(buf, 4, kSoon, kSoon, absl::Milliseconds(20));
  CHECK(s.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(absl::StrContains(s.message(), "after 2 of 4 bytes"));
  // A reader that never reads: the writer stalls once the socket's buffer is full.
  const std::string big(16 << 20, 'x');
  const absl::string_view parts[] = {big};
  s = WriteAllParts(p.fds[0], parts, 1, kSoon, absl::Milliseconds(20));
  CHECK(s.code() == absl::StatusCode::kDeadlineExceeded);
}

TEST_CASE("writing to a closed peer is Unavailable, without SIGPIPE") {
  SocketPair p;
  close(p.fds[1]);
  p.fds[1] = -1;
  const std::string bytes(1024, 'x');
  const absl::string_view parts[] = {bytes};
  CHECK(WriteAllParts(p.fds[0], parts, 1, kSoon).code() == absl::StatusCode::kUnavailable);
}

TEST_CASE("PollMillis rounds up and is 0 when past, -1 for no deadline") {
  CHECK(PollMillis(absl::InfiniteFuture()) == -1);
  CHECK(PollMillis(absl::Now() - absl::Seconds(1)) == 0);
  const int ms = PollMillis(absl::Now() + absl::Microseconds(300));
  CHECK(ms >= 0);
  CHECK(ms <= 1);
}

}  // namespace
}  // namespace dragon::common
