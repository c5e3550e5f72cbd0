#include "daemon/message_batching.h"

namespace dragon::daemon {

std::vector<dragon::v1::HeadMessage> MergeForClient(std::vector<dragon::v1::HeadMessage>* in,
                                                    size_t soft_limit) {
  std::vector<dragon::v1::HeadMessage> out;
  size_t open_bytes = 0;  // approximate size of out.back() when it is a result batch
  for (auto& msg : *in) {
    if (msg.has_results() && !out.empty() && out.back().has_results() &&
        open_bytes < soft_limit) {
      if (msg.results().has_accepted()) {  // held ids: still ahead of these results
        auto* dst = out.back().mutable_results()->mutable_accepted();
        dst->mutable_client_refs()->MergeFrom(msg.results().accepted().client_refs());
        dst->mutable_task_ids()->MergeFrom(msg.results().accepted().task_ids());
      }
      for (auto& r : *msg.mutable_results()->mutable_results()) {
        open_bytes += r.result().data().size() + r.result().error().size() + 32;
        out.back().mutable_results()->mutable_results()->Add(std::move(r));
      }
      continue;
    }
    if (msg.has_accepted() && !out.empty() && out.back().has_accepted()) {
      auto* dst = out.back().mutable_accepted();
      dst->mutable_client_refs()->MergeFrom(msg.accepted().client_refs());
      dst->mutable_task_ids()->MergeFrom(msg.accepted().task_ids());
      continue;
    }
    open_bytes = 0;
    if (msg.has_results()) {
      for (const auto& r : msg.results().results()) {
        open_bytes += r.result().data().size() + r.result().error().size() + 32;
      }
    }
    out.push_back(std::move(msg));
  }
  in->clear();
  return out;
}

std::vector<dragon::v1::HeadToAgent> MergeForAgent(std::vector<dragon::v1::HeadToAgent>* in,
                                                   size_t soft_limit) {
  std::vector<dragon::v1::HeadToAgent> out;
  size_t open_bytes = 0;
  for (auto& msg : *in) {
    if (msg.has_tasks() && !out.empty() && out.back().has_tasks() && open_bytes < soft_limit) {
      for (auto& t : *msg.mutable_tasks()->mutable_tasks()) {
        open_bytes += t.payload().size() + t.cwd().size() + 16;
        out.back().mutable_tasks()->mutable_tasks()->Add(std::move(t));
      }
      continue;
    }
    open_bytes = 0;
    if (msg.has_tasks()) {
      for (const auto& t : msg.tasks().tasks()) open_bytes += t.payload().size() + t.cwd().size() + 16;
    }
    out.push_back(std::move(msg));
  }
  in->clear();
  return out;
}

}  // namespace dragon::daemon
