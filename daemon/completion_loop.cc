#include "daemon/completion_loop.h"

#include <pthread.h>

#include <chrono>
#include <vector>

#include "spdlog/spdlog.h"

namespace dragon::daemon {

CompletionLoop::CompletionLoop(grpc::ServerBuilder* builder)
    : queue_(builder->AddCompletionQueue()) {}

CompletionLoop::~CompletionLoop() { Stop(nullptr, absl::ZeroDuration()); }

void CompletionLoop::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "stream-loop");  // as top -H and /proc name it
    Run();
  });
}

void CompletionLoop::Run() {
  void* tag = nullptr;
  bool ok = false;
  while (queue_->Next(&tag, &ok)) static_cast<CompletionTag*>(tag)->Complete(ok);
}

void CompletionLoop::Stop(grpc::Server* server, absl::Duration grace) {
  std::call_once(stopped_, [&] {
    // The thread keeps handling tags meanwhile: the server's shutdown waits
    // for the calls it cancels, whose tags come back through the queue.
    if (server != nullptr) {
      server->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
    }
    {
      std::unique_lock<std::shared_mutex> lock(ops_mu_);
      accepting_ = false;
    }
    queue_->Shutdown();
    if (thread_.joinable()) {
      thread_.join();
    } else {
      Run();  // never started: drain what the server handed back
    }
    std::vector<LoopCall*> left;
    {
      std::lock_guard<std::mutex> lock(calls_mu_);
      left.assign(calls_.begin(), calls_.end());
    }
    if (!left.empty()) spdlog::debug("releasing {} stream(s) left at shutdown", left.size());
    for (LoopCall* call : left) call->Abandon();
  });
}

void CompletionLoop::Register(LoopCall* call) {
  std::lock_guard<std::mutex> lock(calls_mu_);
  calls_.insert(call);
}

void CompletionLoop::Unregister(LoopCall* call) {
  std::lock_guard<std::mutex> lock(calls_mu_);
  calls_.erase(call);
}

}  // namespace dragon::daemon
