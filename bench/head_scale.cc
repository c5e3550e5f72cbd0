// Load generator for the head-scale benchmark (bench/head_scale.py drives it;
// bench/HEAD_SCALE.md explains the method). It speaks HeadService.Session
// directly (one stream, batched submissions one way, batched results the
// other) so that what is measured is the head, not a Python client.
//
//   head_scale run  --head ADDR --tasks N [--batch B] [--payload-bytes P]
//                   [--window W] [--wait-nodes A] [--timeout-s S]
//       submits N no-op tasks (at most W outstanding) and waits for every
//       result; prints one JSON line: throughput, and whether every task
//       ended exactly once, per node.
//   head_scale fill --head ADDR --tasks N [--batch B] [--payload-bytes P]
//       submits N tasks, waits until the head has accepted all of them,
//       prints one JSON line, then keeps the session (and so the tasks, which
//       stay pending when no agent is connected) open until stdin closes.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dashed_flags.h"
#include "common/head_locator.h"
#include "common/transport.h"
#include "grpcpp/grpcpp.h"
#include "proto/head.grpc.pb.h"

ABSL_FLAG(std::string, head, "", "HOST:PORT of dragond (required)");
ABSL_FLAG(int64_t, tasks, 10000, "tasks to submit");
ABSL_FLAG(int, batch, 1000, "tasks per SubmitBatch message");
ABSL_FLAG(int, payload_bytes, 100, "bytes of (opaque) payload per task");
ABSL_FLAG(int64_t, window, 0, "run: most tasks outstanding at once (0 = no limit)");
ABSL_FLAG(int, wait_nodes, 0, "run: first wait until the head has this many agents");
ABSL_FLAG(int, timeout_s, 300, "give up (exit 1) after this many seconds");

namespace {

// The text dragon-agent --simulate-workers puts in every result it fakes
// (agent/simulated_pool.h); counted so the caller can see what ran where.
constexpr char kSimulatedMarker[] =
    "simulated by dragon-agent --simulate-workers: the payload was not run";

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// A channel to the head with the run's token ($DRAGON_TOKEN, or the token
// file of the head.json under $DRAGON_HOME that names the address).
absl::StatusOr<std::shared_ptr<grpc::Channel>> HeadChannel(const std::string& address) {
  dragon::common::LocateOptions locate;
  locate.explicit_address = address;
  auto location = dragon::common::LocateHead(locate);
  if (!location.ok()) return location.status();
  dragon::common::ClientTransport transport;
  transport.token = location->token;
  transport.tls_ca = location->tls_ca;
  return dragon::common::MakeChannel(location->address, transport);
}

int Die(const std::string& message) {
  std::cerr << "head_scale: " << message << std::endl;
  return 1;
}

bool WaitForNodes(dragon::v1::HeadService::Stub* stub, int nodes, Clock::time_point deadline) {
  while (Clock::now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    dragon::v1::StatusReply reply;
    grpc::Status st = stub->Status(&ctx, dragon::v1::StatusRequest(), &reply);
    if (st.ok() && static_cast<int>(reply.nodes()) >= nodes) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// One Session stream: Hello/Welcome, then a writer (the caller) and a reader
// thread that counts what comes back.
class Session {
 public:
  explicit Session(dragon::v1::HeadService::Stub* stub, int64_t tasks) : counts_(tasks, 0) {
    stream_ = stub->Session(&ctx_);
  }

  bool Open(std::string* error) {
    dragon::v1::ClientMessage hello;
    hello.mutable_hello()->set_protocol_version(dragon::v1::PROTOCOL_VERSION_CURRENT);
    hello.mutable_hello()->set_client_name("bench/head_scale");
    char cwd[4096] = "/";
    if (getcwd(cwd, sizeof(cwd)) == nullptr) cwd[0] = '/';
    hello.mutable_hello()->set_cwd(cwd);
    hello.mutable_hello()->set_client_pid(getpid());
    dragon::v1::HeadMessage reply;
    if (!stream_->Write(hello) || !stream_->Read(&reply) || !reply.has_welcome()) {
      grpc::Status st = stream_->Finish();
      *error = absl::StrCat("session refused: ", st.error_message());
      return false;
    }
    reader_ = std::thread([this] { ReadLoop(); });
    return true;
  }

  // Submits refs [from, to) in one message; blocks while `window` are out.
  bool Submit(int64_t from, int64_t to, const std::string& payload, int64_t window) {
    if (window > 0) {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return to - ended_ <= std::max(window, to - from) || reader_done_; });
    }
    dragon::v1::ClientMessage msg;
    auto* batch = msg.mutable_submit();
    batch->mutable_tasks()->Reserve(static_cast<int>(to - from));
    for (int64_t ref = from; ref < to; ++ref) {
      auto* t = batch->add_tasks();
      t->set_client_ref(static_cast<uint64_t>(ref));
      t->set_kind(dragon::v1::PYTHON);
      t->set_payload(payload);
      t->set_name("noop");
    }
    return stream_->Write(msg);
  }

  // Waits until `accepted` (or, if results, `ended`) reaches n.
  bool WaitFor(int64_t n, bool results, Clock::time_point deadline) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_until(l, deadline, [&] {
      return (results ? ended_ : accepted_ + refused_) >= n || reader_done_;
    }) && (results ? ended_ : accepted_ + refused_) >= n;
  }

  void Close() {
    stream_->WritesDone();
    ctx_.TryCancel();
    if (reader_.joinable()) reader_.join();
    (void)stream_->Finish();
  }

  // Read after Close() or WaitFor().
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<uint8_t> counts_;  // results per client_ref
  int64_t accepted_ = 0, refused_ = 0, ended_ = 0, duplicates_ = 0, unknown_ = 0;
  int64_t simulated_ = 0;
  std::map<std::string, int64_t> outcomes_;
  std::map<std::string, int64_t> per_node_;
  Clock::time_point last_result_;
  bool reader_done_ = false;

 private:
  void ReadLoop() {
    dragon::v1::HeadMessage msg;
    while (stream_->Read(&msg)) {
      std::lock_guard<std::mutex> l(mu_);
      if (msg.has_accepted()) {
        accepted_ += msg.accepted().task_ids_size();
      } else if (msg.has_results()) {
        for (const auto& r : msg.results().results()) {
          const uint64_t ref = r.client_ref();
          if (ref >= counts_.size()) {
            ++unknown_;
            continue;
          }
          if (counts_[ref]++ != 0) {
            ++duplicates_;
            continue;
          }
          ++ended_;
          const auto& res = r.result();
          ++outcomes_[dragon::v1::Outcome_Name(res.outcome())];
          ++per_node_[res.node()];
          if (res.outcome() == dragon::v1::OK && res.data().empty() &&
              res.error() == kSimulatedMarker) {
            ++simulated_;
          }
        }
        last_result_ = Clock::now();
      }
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> l(mu_);
    reader_done_ = true;
    cv_.notify_all();
  }

  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<dragon::v1::ClientMessage, dragon::v1::HeadMessage>>
      stream_;
  std::thread reader_;
};

std::string JsonMap(const std::map<std::string, int64_t>& m) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : m) parts.push_back(absl::StrCat("\"", k, "\": ", v));
  return absl::StrCat("{", absl::StrJoin(parts, ", "), "}");
}

int Run(bool fill) {
  const std::string head = absl::GetFlag(FLAGS_head);
  const int64_t tasks = absl::GetFlag(FLAGS_tasks);
  const int batch = std::max(1, absl::GetFlag(FLAGS_batch));
  const int64_t window = absl::GetFlag(FLAGS_window);
  if (head.empty()) return Die("--head is required");
  if (tasks < 1) return Die("--tasks must be >= 1");
  const auto deadline = Clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_timeout_s));
  auto channel = HeadChannel(head);
  if (!channel.ok()) return Die(std::string(channel.status().message()));
  auto stub = dragon::v1::HeadService::NewStub(*channel);
  const int wait_nodes = absl::GetFlag(FLAGS_wait_nodes);
  if (wait_nodes > 0 && !WaitForNodes(stub.get(), wait_nodes, deadline)) {
    return Die(absl::StrCat("the head at ", head, " did not reach ", wait_nodes, " agents"));
  }
  const std::string payload(static_cast<size_t>(std::max(1, absl::GetFlag(FLAGS_payload_bytes))),
                            'x');
  Session session(stub.get(), tasks);
  std::string error;
  if (!session.Open(&error)) return Die(error);

  const auto t0 = Clock::now();
  for (int64_t from = 0; from < tasks; from += batch) {
    if (!session.Submit(from, std::min(tasks, from + batch), payload, fill ? 0 : window)) {
      return Die("the head closed the session while submitting");
    }
  }
  const auto t_submitted = Clock::now();
  const bool all_accepted = session.WaitFor(tasks, false, deadline);
  const auto t_accepted = Clock::now();
  if (fill) {
    std::lock_guard<std::mutex> l(session.mu_);
    std::cout << "{\"mode\": \"fill\", \"tasks\": " << tasks << ", \"accepted\": "
              << session.accepted_ << ", \"payload_bytes\": " << payload.size()
              << ", \"submit_s\": " << Seconds(t0, t_submitted)
              << ", \"accept_s\": " << Seconds(t0, t_accepted) << "}" << std::endl;
  }
  if (fill) {
    if (!all_accepted) {
      session.Close();
      return Die("not every task was accepted in time");
    }
    // Hold the session (its tasks stay queued) until told to let go.
    char c;
    while (read(0, &c, 1) > 0) {
    }
    session.Close();
    return 0;
  }
  const bool all_ended = session.WaitFor(tasks, true, deadline);
  session.Close();
  std::lock_guard<std::mutex> l(session.mu_);
  int64_t missing = 0;
  for (uint8_t c : session.counts_) missing += c == 0;
  int64_t min_node = 0, max_node = 0;
  if (!session.per_node_.empty()) {
    min_node = max_node = session.per_node_.begin()->second;
    for (const auto& [n, c] : session.per_node_) {
      min_node = std::min(min_node, c);
      max_node = std::max(max_node, c);
    }
  }
  const double elapsed = Seconds(t0, session.last_result_);
  std::cout << "{\"mode\": \"run\", \"tasks\": " << tasks << ", \"batch\": " << batch
            << ", \"window\": " << window << ", \"payload_bytes\": " << payload.size()
            << ", \"accepted\": " << session.accepted_ << ", \"ended\": " << session.ended_
            << ", \"missing\": " << missing << ", \"duplicates\": " << session.duplicates_
            << ", \"unknown\": " << session.unknown_ << ", \"simulated\": " << session.simulated_
            << ", \"outcomes\": " << JsonMap(session.outcomes_)
            << ", \"nodes_used\": " << session.per_node_.size()
            << ", \"tasks_per_node_min\": " << min_node
            << ", \"tasks_per_node_max\": " << max_node
            << ", \"submit_s\": " << Seconds(t0, t_submitted)
            << ", \"elapsed_s\": " << elapsed
            << ", \"tasks_per_s\": " << (elapsed > 0 ? session.ended_ / elapsed : 0.0) << "}"
            << std::endl;
  if (!all_ended) return Die(absl::StrCat("only ", session.ended_, " of ", tasks, " tasks ended"));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "load generator for bench/head_scale.py (see bench/HEAD_SCALE.md).\n"
      "  head_scale run  --head ADDR --tasks N [--batch B] [--payload-bytes P] [--window W] "
      "[--wait-nodes A]\n"
      "  head_scale fill --head ADDR --tasks N [--batch B] [--payload-bytes P]   "
      "(holds the session until stdin closes)");
  std::vector<std::string> storage;
  std::vector<char*> args = dragon::common::UnderscoreFlagNames(argc, argv, &storage);
  std::vector<char*> rest = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (rest.size() != 2 || (std::string(rest[1]) != "run" && std::string(rest[1]) != "fill")) {
    return Die("expected one command, 'run' or 'fill' (see --help)");
  }
  return Run(std::string(rest[1]) == "fill");
}
