#include "agent/mpi_rank0_io.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/close_fd.h"

namespace dragon::agent {
namespace {

// How much of rank 0's stdout one frame carries at most.
constexpr size_t kStdoutChunk = 64u << 10;

}  // namespace

v1::TaskIOFrame TaskIOErrorFrame(uint64_t task_id, uint64_t channel, const std::string& error) {
  v1::TaskIOFrame frame;
  frame.set_task_id(task_id);
  frame.set_channel(channel);
  frame.set_error(error);
  return frame;
}

MpiRank0IO::~MpiRank0IO() {
  CloseFd(&stdin_fd_);
  CloseFd(&out_fd_);
}

void MpiRank0IO::FollowStdout(std::string path) {
  stdout_path_ = std::move(path);
  out_fd_ = open(stdout_path_.c_str(), O_RDONLY | O_CLOEXEC);
}

void MpiRank0IO::Open(uint64_t channel, uint64_t stdout_offset) {
  channel_ = channel;
  out_sent_ = out_acked_ = stdout_offset;
  out_eof_sent_ = false;
  stdin_acked_ = 0;
}

void MpiRank0IO::Receive(const v1::TaskIOFrame& frame, bool job_ended,
                         std::vector<v1::TaskIOFrame>* out) {
  if (frame.close()) {
    channel_ = 0;
    return;
  }
  if (!frame.data().empty()) {
    if (job_ended || stdin_fd_ < 0 || stdin_eof_) {
      stdin_taken_ += frame.data().size();  // nobody reads it any more: acked, dropped
    } else if (stdin_buf_.size() + frame.data().size() > 2 * window_) {
      out->push_back(TaskIOErrorFrame(
          task_id_, channel_,
          absl::StrCat("task ", task_id_, ": the client sent more than ", window_,
                       " bytes of stdin without waiting for them to be acknowledged")));
      channel_ = 0;
      return;
    } else {
      stdin_buf_ += frame.data();
    }
  }
  if (frame.eof()) stdin_eof_ = true;
  if (frame.ack() > out_acked_) out_acked_ = frame.ack();
  WriteStdin(out);
  SendStdout(job_ended, out);
}

void MpiRank0IO::WriteStdin(std::vector<v1::TaskIOFrame>* out) {
  while (stdin_fd_ >= 0 && !stdin_buf_.empty()) {
    const ssize_t n = write(stdin_fd_, stdin_buf_.data(), stdin_buf_.size());
    if (n > 0) {
      stdin_buf_.erase(0, static_cast<size_t>(n));
      stdin_taken_ += static_cast<uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    // EPIPE: rank 0 (or the launcher) closed its stdin; what is left is dropped.
    stdin_taken_ += stdin_buf_.size();
    stdin_buf_.clear();
    CloseFd(&stdin_fd_);
  }
  if (stdin_fd_ >= 0 && stdin_eof_ && stdin_buf_.empty()) CloseFd(&stdin_fd_);
  if (channel_ != 0 && stdin_taken_ != stdin_acked_) {
    v1::TaskIOFrame ack;
    ack.set_task_id(task_id_);
    ack.set_channel(channel_);
    ack.set_ack(stdin_taken_);
    out->push_back(std::move(ack));
    stdin_acked_ = stdin_taken_;
  }
}

void MpiRank0IO::SendStdout(bool job_ended, std::vector<v1::TaskIOFrame>* out) {
  if (channel_ == 0 || out_eof_sent_) return;
  if (out_fd_ < 0) out_fd_ = open(stdout_path_.c_str(), O_RDONLY | O_CLOEXEC);
  std::string chunk;
  while (true) {
    const uint64_t in_flight = out_sent_ - std::min(out_sent_, out_acked_);
    if (in_flight >= window_) return;
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kStdoutChunk, window_ - in_flight));
    chunk.resize(want);
    ssize_t n = out_fd_ >= 0 ? pread(out_fd_, chunk.data(), want, static_cast<off_t>(out_sent_)) : 0;
    if (n < 0) n = 0;
    if (n == 0) {
      if (job_ended) {
        v1::TaskIOFrame eof;
        eof.set_task_id(task_id_);
        eof.set_channel(channel_);
        eof.set_eof(true);
        eof.set_data_offset(out_sent_);
        out->push_back(std::move(eof));
        out_eof_sent_ = true;
      }
      return;
    }
    size_t send = static_cast<size_t>(n);
    // Whole lines only while the job runs, unless one line fills the window.
    if (!job_ended) {
      const size_t last_nl = chunk.rfind('\n', static_cast<size_t>(n) - 1);
      if (last_nl == std::string::npos) {
        // A line longer than the window goes in pieces; otherwise wait for its end.
        if (in_flight > 0 || static_cast<size_t>(n) < want) return;
      } else {
        send = last_nl + 1;
      }
    }
    v1::TaskIOFrame frame;
    frame.set_task_id(task_id_);
    frame.set_channel(channel_);
    frame.set_data_offset(out_sent_);
    frame.set_data(chunk.data(), send);
    out->push_back(std::move(frame));
    out_sent_ += send;
  }
}

void MpiRank0IO::EndStdin() {
  CloseFd(&stdin_fd_);
  stdin_buf_.clear();
}

}  // namespace dragon::agent
