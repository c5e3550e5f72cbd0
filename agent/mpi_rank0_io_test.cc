// MpiRank0IO with a real pipe for stdin and a file for rank 0's stdout,
// without MPI: whole lines, the window, acks, eof, a client that overruns.
#include "agent/mpi_rank0_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace dragon::agent {
namespace {

std::string StdoutFile() {
  const char* t = getenv("TEST_TMPDIR");
  static int n = 0;
  return absl::StrCat(t != nullptr ? t : "/tmp", "/rank0-", getpid(), "-", n++, ".out");
}

void Append(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::app);
  f << text;
}

std::string Data(const std::vector<v1::TaskIOFrame>& frames) {
  std::string out;
  for (const auto& f : frames) out += f.data();
  return out;
}

TEST_CASE("rank 0's stdout goes in whole lines, within the window, then eof") {
  const std::string path = StdoutFile();
  Append(path, "");
  MpiRank0IO io(5, /*window=*/16);
  io.FollowStdout(path);
  std::vector<v1::TaskIOFrame> out;
  io.SendStdout(false, &out);
  CHECK(out.empty());  // no client yet
  io.Open(9, 0);
  Append(path, "one\ntw");
  io.SendStdout(false, &out);
  REQUIRE(out.size() == 1);
  CHECK(out[0].task_id() == 5);
  CHECK(out[0].channel() == 9);
  CHECK(out[0].data() == "one\n");
  out.clear();
  Append(path, "o\n0123456789abcdef\n");
  io.SendStdout(false, &out);
  CHECK(Data(out) == "two\n");  // the long line does not fit beside what is unacknowledged
  out.clear();
  v1::TaskIOFrame ack;
  ack.set_channel(9);
  ack.set_ack(8);
  io.Receive(ack, false, &out);
  CHECK(Data(out) == "0123456789abcdef");  // one line fills the window: sent in pieces
  out.clear();
  ack.set_ack(24);
  io.Receive(ack, true, &out);  // the job ended: the rest, then eof
  REQUIRE(out.size() == 2);
  CHECK(out[0].data() == "\n");
  CHECK(out[1].eof());
  CHECK(out[1].data_offset() == 25);
}

TEST_CASE("stdin frames are written to the pipe and acknowledged; too much is an error") {
  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0);
  MpiRank0IO io(5, /*window=*/4);
  io.SetStdin(fds[1]);
  io.Open(3, 0);
  std::vector<v1::TaskIOFrame> out;
  v1::TaskIOFrame in;
  in.set_channel(3);
  in.set_data("hello");
  io.Receive(in, false, &out);
  REQUIRE(!out.empty());
  CHECK(out.back().ack() == 5);
  char buf[16] = {};
  CHECK(read(fds[0], buf, sizeof(buf)) == 5);
  CHECK(std::string(buf, 5) == "hello");
  out.clear();
  in.set_data("");
  in.set_eof(true);
  io.Receive(in, false, &out);
  CHECK(io.stdin_fd() < 0);  // eof: the pipe is closed
  CHECK(read(fds[0], buf, sizeof(buf)) == 0);
  close(fds[0]);

  REQUIRE(pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0);
  MpiRank0IO full(6, /*window=*/4);
  full.SetStdin(fds[1]);
  full.Open(4, 0);
  std::string fill(1 << 20, 'x');  // more than the pipe takes
  in = v1::TaskIOFrame();
  in.set_channel(4);
  in.set_data(fill);
  out.clear();
  full.Receive(in, false, &out);
  REQUIRE(!out.empty());
  CHECK(absl::StrContains(out.back().error(), "more than 4 bytes of stdin"));
  CHECK(full.channel() == 0);
  close(fds[0]);
}

}  // namespace
}  // namespace dragon::agent
