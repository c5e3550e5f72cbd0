// What the session's receiver thread hands to Python: the Accepted pairs,
// the results and the end of the stream, gathered until Python takes them
// all at once (one interpreter-lock acquisition for many futures).
//
// The receiver thread never touches Python: it only appends here. The Python
// side blocks in Take() with the interpreter lock released.
#ifndef DRAGON_CLIENT_PYTHON_SESSION_INBOX_H_
#define DRAGON_CLIENT_PYTHON_SESSION_INBOX_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "proto/head.pb.h"

namespace dragon::client {

struct InboxBatch {
  std::vector<std::pair<uint64_t, uint64_t>> accepted;  // (client_ref, task_id)
  std::vector<dragon::v1::ClientResult> results;
  // Set once the stream has ended (OK after Close), and in every batch after.
  std::optional<absl::Status> end;

  bool empty() const { return accepted.empty() && results.empty() && !end.has_value(); }
};

class SessionInbox {
 public:
  // From the receiver thread.
  void AddAccepted(const dragon::v1::Accepted& accepted);
  void AddResults(dragon::v1::ResultBatch* batch);  // moves the results out
  void End(absl::Status status);

  // Waits up to `timeout` for anything, then hands over everything gathered
  // (an empty batch if nothing came in time).
  InboxBatch Take(absl::Duration timeout);

  // Results of these client refs are wanted whole (serialized ClientResult),
  // e.g. MPI jobs that read their ranks' reports; others as plain fields.
  void WantWhole(uint64_t client_ref);
  bool TakeWantsWhole(uint64_t client_ref);  // true once per ref marked

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  InboxBatch pending_;
  std::optional<absl::Status> end_;
  std::unordered_set<uint64_t> whole_;
  // whole_.size(), read without the lock: most sessions never want a whole
  // result, and TakeWantsWhole runs once per result.
  std::atomic<size_t> whole_count_{0};
};

}  // namespace dragon::client

#endif  // DRAGON_CLIENT_PYTHON_SESSION_INBOX_H_
