#include "client/python/session_inbox.h"

namespace dragon::client {

void SessionInbox::AddAccepted(const dragon::v1::Accepted& accepted) {
  const int n = std::min(accepted.client_refs_size(), accepted.task_ids_size());
  if (n == 0) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (int i = 0; i < n; ++i) {
      pending_.accepted.emplace_back(accepted.client_refs(i), accepted.task_ids(i));
    }
  }
  cv_.notify_one();
}

void SessionInbox::AddResults(dragon::v1::ResultBatch* batch) {
  if (batch->results_size() == 0) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (dragon::v1::ClientResult& r : *batch->mutable_results()) {
      pending_.results.push_back(std::move(r));
    }
  }
  cv_.notify_one();
}

void SessionInbox::End(absl::Status status) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!end_.has_value()) end_ = std::move(status);
  }
  cv_.notify_all();
}

InboxBatch SessionInbox::Take(absl::Duration timeout) {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait_for(l, absl::ToChronoMicroseconds(std::max(timeout, absl::ZeroDuration())), [this] {
    return !pending_.accepted.empty() || !pending_.results.empty() || end_.has_value();
  });
  InboxBatch out;
  std::swap(out, pending_);
  out.end = end_;
  return out;
}

void SessionInbox::WantWhole(uint64_t client_ref) {
  std::lock_guard<std::mutex> l(mu_);
  whole_.insert(client_ref);
  whole_count_.store(whole_.size());
}

bool SessionInbox::TakeWantsWhole(uint64_t client_ref) {
  if (whole_count_.load() == 0) return false;  // no lock per result when none is wanted
  std::lock_guard<std::mutex> l(mu_);
  const bool wanted = whole_.erase(client_ref) > 0;
  whole_count_.store(whole_.size());
  return wanted;
}

}  // namespace dragon::client
