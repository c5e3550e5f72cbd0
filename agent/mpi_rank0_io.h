// Rank 0's side of an MPI job's TaskIO channel (docs/INTERFACES.md "MPI
// jobs"): the client's stdin frames are fed into the launcher's stdin pipe
// (which the launcher passes to rank 0), and rank 0's stdout file is
// followed and sent back in whole lines. At most `window` bytes go
// unacknowledged each way, so that neither a fast rank 0 nor a fast client
// can fill the agent's memory or the head's.
//
// Never blocks; the launcher calls it when the files or the pipe change and
// when frames arrive. Frames for the head are appended to the vector passed
// in, in the order they are to be sent.
#ifndef DRAGON_AGENT_MPI_RANK0_IO_H_
#define DRAGON_AGENT_MPI_RANK0_IO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "proto/agent.pb.h"

namespace dragon::agent {

// Unacknowledged TaskIO data allowed each way (stdin toward rank 0, stdout
// toward the client); the head refuses a client that sends more.
inline constexpr uint64_t kTaskIOWindow = 256u << 10;

// A frame that tells the client of `channel` what went wrong.
v1::TaskIOFrame TaskIOErrorFrame(uint64_t task_id, uint64_t channel, const std::string& error);

class MpiRank0IO {
 public:
  MpiRank0IO(uint64_t task_id, uint64_t window) : task_id_(task_id), window_(window) {}
  ~MpiRank0IO();  // closes the pipe and the followed file
  MpiRank0IO(const MpiRank0IO&) = delete;
  MpiRank0IO& operator=(const MpiRank0IO&) = delete;

  // The write end (non-blocking) of the launcher's stdin pipe; owned from now on.
  void SetStdin(int fd) { stdin_fd_ = fd; }
  // The file rank 0's stdout goes to (opened now, and again if that failed).
  void FollowStdout(std::string path);

  int stdin_fd() const { return stdin_fd_; }
  // Whether there are bytes waiting for the pipe to take them (poll POLLOUT).
  bool stdin_pending() const { return stdin_fd_ >= 0 && !stdin_buf_.empty(); }
  uint64_t channel() const { return channel_; }  // 0 = no client

  // A client opens the channel, replacing any other, and reads rank 0's
  // stdout from `stdout_offset` on (a reconnecting client has the rest).
  void Open(uint64_t channel, uint64_t stdout_offset);
  // A frame of the current client's: close, stdin bytes or eof, stdout acks;
  // then whatever can move does. `job_ended`: nobody reads stdin any more.
  void Receive(const v1::TaskIOFrame& frame, bool job_ended, std::vector<v1::TaskIOFrame>* out);
  // Writes buffered stdin as far as the pipe takes it, acks what it took.
  void WriteStdin(std::vector<v1::TaskIOFrame>* out);
  // Sends what rank 0 wrote, within the window; whole lines while the job
  // runs, the rest and then eof once it `job_ended`.
  void SendStdout(bool job_ended, std::vector<v1::TaskIOFrame>* out);
  // The job ended: its stdin is closed and what was not written dropped.
  void EndStdin();

 private:
  const uint64_t task_id_;
  const uint64_t window_;
  uint64_t channel_ = 0;
  int stdin_fd_ = -1;
  int out_fd_ = -1;  // rank 0's stdout, read for TaskIO
  std::string stdout_path_;
  uint64_t out_sent_ = 0, out_acked_ = 0;
  bool out_eof_sent_ = false;
  std::string stdin_buf_;
  uint64_t stdin_taken_ = 0;  // bytes written to rank 0 (or dropped after it closed stdin)
  uint64_t stdin_acked_ = 0;  // last count told to the client
  bool stdin_eof_ = false;
};

}  // namespace dragon::agent

#endif  // DRAGON_AGENT_MPI_RANK0_IO_H_
