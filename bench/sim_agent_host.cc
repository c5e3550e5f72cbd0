#include "bench/sim_agent_host.h"

#include <unistd.h>

#include <optional>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "agent/simulated_pool.h"
#include "common/transport.h"
#include "proto/agent.grpc.pb.h"

namespace dragon::bench {
namespace {

constexpr uint32_t kProtocolVersion = dragon::v1::PROTOCOL_VERSION_CURRENT;

int64_t NowUs() { return absl::ToUnixMicros(absl::Now()); }

}  // namespace

// One agent: a ClientBidiReactor, so no thread of its own. At most one
// write is in flight; results that arrive meanwhile are merged into the
// next update, as the real agent's writer does.
class SimAgentHost::Agent
    : public grpc::ClientBidiReactor<dragon::v1::AgentMessage, dragon::v1::HeadToAgent> {
 public:
  Agent(SimAgentHost* host, std::string node, int workers,
        std::shared_ptr<grpc::Channel> channel)
      : host_(host), node_(std::move(node)), workers_(workers), channel_(std::move(channel)) {
    stub_ = dragon::v1::AgentService::NewStub(channel_);
    stub_->async()->Connect(&context_, this);
    dragon::v1::AgentMessage reg;
    auto* r = reg.mutable_register_();
    r->set_protocol_version(kProtocolVersion);
    r->set_node_id(node_);
    char host_name[256] = {};
    gethostname(host_name, sizeof(host_name) - 1);
    r->set_host(host_name);
    r->set_cores(1);
    r->set_pid(getpid());
    r->set_agent_version("0.1.0 (simulated workers, bench/sim_agents)");
    r->set_workers(static_cast<uint32_t>(workers));
    Send(std::move(reg));
    StartRead(&in_);
    StartCall();
  }

  void Cancel() { context_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream is ending; OnDone follows
    switch (in_.body_case()) {
      case dragon::v1::HeadToAgent::kRegistered:
        host_->Registered();
        break;
      case dragon::v1::HeadToAgent::kTasks: {
        const int64_t now = NowUs();
        dragon::v1::AgentMessage msg;
        auto* results = msg.mutable_update()->mutable_results();
        results->Reserve(in_.tasks().tasks_size());
        for (const auto& t : in_.tasks().tasks()) {
          auto* r = results->Add();
          r->set_task_id(t.task_id());
          r->set_outcome(dragon::v1::OK);
          r->set_error(agent::kSimulatedMarker);
          r->set_node(node_);
          r->set_start_us(now);
          r->set_end_us(now);
        }
        host_->Answered(static_cast<uint64_t>(in_.tasks().tasks_size()));
        Send(std::move(msg));
        break;
      }
      case dragon::v1::HeadToAgent::kPing: {
        dragon::v1::AgentMessage beat;
        beat.mutable_heartbeat()->set_ping_seq(in_.ping().seq());
        beat.mutable_heartbeat()->set_ready_workers(static_cast<uint32_t>(workers_));
        Send(std::move(beat));
        break;
      }
      case dragon::v1::HeadToAgent::kCancel:
        break;  // every task already ended when it arrived
      case dragon::v1::HeadToAgent::kShutdown: {
        absl::MutexLock l(&mu_);
        closing_ = true;
        if (!writing_) StartWritesDone();
        break;
      }
      default:
        break;
    }
    in_.Clear();
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock l(&mu_);
    writing_ = false;
    if (!ok) return;  // broken stream: the read fails too
    if (pending_beat_) {
      out_ = std::move(*pending_beat_);
      pending_beat_.reset();
      writing_ = true;
      StartWrite(&out_);
    } else if (has_pending_) {
      has_pending_ = false;
      out_ = std::move(pending_);
      pending_.Clear();
      writing_ = true;
      StartWrite(&out_);
    } else if (closing_) {
      StartWritesDone();
    }
  }

  void OnDone(const grpc::Status& status) override {
    host_->Ended(node_, status.ok() ? absl::OkStatus()
                                    : absl::Status(static_cast<absl::StatusCode>(
                                                       status.error_code()),
                                                   status.error_message()));
  }

 private:
  void Send(dragon::v1::AgentMessage msg) {
    absl::MutexLock l(&mu_);
    if (closing_) return;
    if (!writing_) {
      out_ = std::move(msg);
      writing_ = true;
      StartWrite(&out_);
      return;
    }
    if (msg.has_heartbeat()) {
      pending_beat_ = std::move(msg);  // only the latest answer matters
      return;
    }
    if (!has_pending_) {
      pending_ = std::move(msg);
      has_pending_ = true;
    } else {
      for (auto& r : *msg.mutable_update()->mutable_results()) {
        *pending_.mutable_update()->add_results() = std::move(r);
      }
    }
  }

  SimAgentHost* const host_;
  const std::string node_;
  const int workers_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<dragon::v1::AgentService::Stub> stub_;
  grpc::ClientContext context_;
  dragon::v1::HeadToAgent in_;

  absl::Mutex mu_;
  dragon::v1::AgentMessage out_ ABSL_GUARDED_BY(mu_);      // being written
  dragon::v1::AgentMessage pending_ ABSL_GUARDED_BY(mu_);  // next, merged
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<dragon::v1::AgentMessage> pending_beat_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
};

SimAgentHost::SimAgentHost(SimAgentHostOptions options) : options_(std::move(options)) {}

SimAgentHost::~SimAgentHost() {
  Stop();
  (void)Wait();
}

absl::Status SimAgentHost::Start(absl::Duration timeout) {
  if (!agents_.empty()) return absl::FailedPreconditionError("already started");
  if (options_.agents < 1 || options_.workers < 1) {
    return absl::InvalidArgumentError("agents and workers must be >= 1");
  }
  common::ClientTransport transport;
  transport.token = options_.token;
  transport.own_connection = true;  // its own TCP connection, like an agent on its own node
  for (int i = 0; i < options_.agents; ++i) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        common::MakeChannel(options_.head_address, transport);
    if (!channel.ok()) return channel.status();
    agents_.push_back(std::make_unique<Agent>(
        this, absl::StrFormat("%s%03d", options_.node_prefix, i), options_.workers, *channel));
  }
  absl::MutexLock l(&mu_);
  auto settled = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return registered_ + ended_ >= options_.agents;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&settled), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        registered_, " of ", options_.agents, " simulated agents registered with ",
        options_.head_address, " within ", absl::FormatDuration(timeout)));
  }
  if (!first_error_.ok()) return first_error_;
  if (ended_ > 0) return absl::UnavailableError("a simulated agent's stream ended at once");
  return absl::OkStatus();
}

absl::Status SimAgentHost::Wait() {
  absl::MutexLock l(&mu_);
  auto all_ended = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ended_ >= static_cast<int>(agents_.size());
  };
  mu_.Await(absl::Condition(&all_ended));
  return first_error_;
}

void SimAgentHost::Stop() {
  for (auto& a : agents_) a->Cancel();
}

uint64_t SimAgentHost::tasks_done() const {
  absl::MutexLock l(&mu_);
  return tasks_done_;
}

void SimAgentHost::Registered() {
  absl::MutexLock l(&mu_);
  ++registered_;
}

void SimAgentHost::Ended(const std::string& node, const absl::Status& status) {
  absl::MutexLock l(&mu_);
  ++ended_;
  if (!status.ok() && first_error_.ok()) {
    first_error_ = absl::Status(status.code(), absl::StrCat("agent ", node, ": ", status.message()));
  }
}

void SimAgentHost::Answered(uint64_t tasks) {
  absl::MutexLock l(&mu_);
  tasks_done_ += tasks;
}

}  // namespace dragon::bench
