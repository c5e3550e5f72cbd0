// A stream's queue of outgoing messages. Producers (the Head, under its lock)
// push; the stream's one writer thread takes everything queued at once, so a
// burst of results leaves in a few large writes rather than many small ones.
#ifndef DRAGON_DAEMON_OUTBOX_H_
#define DRAGON_DAEMON_OUTBOX_H_

#include <condition_variable>
#include <mutex>
#include <utility>
#include <vector>

namespace dragon::daemon {

template <typename Message>
class Outbox {
 public:
  // Returns false (and drops the message) once the outbox is closed.
  bool Push(Message message) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return false;
      queue_.push_back(std::move(message));
    }
    cv_.notify_one();
    return true;
  }

  // Blocks until there is something to send or the outbox is closed and
  // empty; returns false in the latter case. Appends to `out`.
  bool Drain(std::vector<Message>* out) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !queue_.empty() || closed_; });
    if (queue_.empty()) return false;
    if (out->empty()) {
      out->swap(queue_);
    } else {
      for (auto& m : queue_) out->push_back(std::move(m));
      queue_.clear();
    }
    return true;
  }

  // Non-blocking: whatever is queued now (possibly nothing).
  std::vector<Message> TakeAll() {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Message> out;
    out.swap(queue_);
    return out;
  }

  // Messages already queued are still drained; new ones are refused.
  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

  bool closed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Message> queue_;
  bool closed_ = false;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_OUTBOX_H_
