// A stream's queue of outgoing messages. Producers (the Head, under its lock)
// push; the stream's writer takes everything queued at once, so a burst of
// results leaves in a few large writes rather than many small ones. The
// writer is either a thread blocked in Drain() or, for the head's streams
// on its CompletionLoop, a hook run after each Push() and Close().
#ifndef DRAGON_DAEMON_OUTBOX_H_
#define DRAGON_DAEMON_OUTBOX_H_

#include <condition_variable>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

namespace dragon::daemon {

template <typename Message>
class Outbox {
 public:
  // Set before the outbox is shared. Runs on the pushing (or closing)
  // thread, outside the outbox's lock but possibly under the caller's (the
  // Head's): it must not call back into the Head. Not run for refused pushes.
  void SetOnPush(std::function<void()> on_push) { on_push_ = std::move(on_push); }

  // Returns false (and drops the message) once the outbox is closed.
  bool Push(Message message) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return false;
      queue_.push_back(std::move(message));
    }
    cv_.notify_one();
    if (on_push_) on_push_();
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
      if (closed_) return;
      closed_ = true;
    }
    cv_.notify_all();
    if (on_push_) on_push_();
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
  std::function<void()> on_push_;
};

}  // namespace dragon::daemon

#endif  // DRAGON_DAEMON_OUTBOX_H_
