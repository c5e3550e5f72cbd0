// CompletionLoop and LoopStream over a real in-process gRPC server and raw
// client streams: echoes in order, a stream that finishes early with a read in
// flight, the loop stopped with streams open, operations refused after the
// stop, a loop that never started. Every stream object must be released.
#include "daemon/completion_loop.h"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "common/transport.h"
#include "daemon/loop_stream.h"
#include "proto/agent.grpc.pb.h"

namespace dragon::daemon {
namespace {

using dragon::v1::AgentMessage;
using dragon::v1::HeadToAgent;
using ClientStream = grpc::ClientReaderWriter<AgentMessage, HeadToAgent>;

constexpr uint32_t kFinishNow = 99;  // a heartbeat with this many busy workers

struct Counters {
  std::atomic<int> live{0};
  std::atomic<int> begun{0};
  // How reads ended: the client half-closed, or the call was cancelled or broke.
  std::atomic<int> closed{0};
  std::atomic<int> cancelled{0};
};

// Echoes each heartbeat's ping_seq as a Ping; finishes OK once the client
// half-closes and everything is written, or at once with FAILED_PRECONDITION
// (its read still in flight) when told to.
class EchoStream final : public LoopStream<AgentMessage, HeadToAgent> {
 public:
  EchoStream(CompletionLoop* loop, Counters* counters) : LoopStream(loop), counters_(counters) {
    ++counters_->live;
  }
  ~EchoStream() override { --counters_->live; }

 private:
  void Begin() override {
    ++counters_->begun;
    StartRead(&in_);
  }
  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok && !reads_over_) ++(Cancelled() ? counters_->cancelled : counters_->closed);
    if (!ok || reads_over_) {  // the client closed, or the read after the finish failed
      reads_over_ = true;
      PumpLocked();
      return;
    }
    if (in_.heartbeat().busy_workers() == kFinishNow) {
      // Finishes with a read in flight, which comes back failed after.
      status_ = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "told to");
      reads_over_ = true;
      StartRead(&in_);
      PumpLocked();
      return;
    }
    HeadToAgent out;
    out.mutable_ping()->set_seq(in_.heartbeat().ping_seq());
    queue_.push_back(std::move(out));
    PumpLocked();
    StartRead(&in_);
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    queue_.pop_front();
    if (!ok) queue_.clear();
    PumpLocked();
  }
  void OnDone() override { delete this; }

  void PumpLocked() {
    if (writing_ || finished_) return;
    if (!queue_.empty()) {
      writing_ = true;
      StartWrite(&queue_.front());
    } else if (reads_over_) {
      finished_ = true;
      Finish(status_);
    }
  }

  Counters* const counters_;
  AgentMessage in_;
  std::mutex mu_;
  std::deque<HeadToAgent> queue_;  // front() is being written
  bool writing_ = false;
  bool reads_over_ = false;
  bool finished_ = false;
  grpc::Status status_;
};

struct Bed {
  Counters counters;
  dragon::v1::AgentService::AsyncService service;
  std::unique_ptr<CompletionLoop> loop;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<dragon::v1::AgentService::Stub> stub;

  explicit Bed(bool start = true) {
    grpc::ServerBuilder builder;
    int port = 0;
    REQUIRE(common::ConfigureServer(&builder, "127.0.0.1:0", common::ServerTransport{}, &port).ok());
    builder.RegisterService(&service);
    loop = std::make_unique<CompletionLoop>(&builder);
    server = builder.BuildAndStart();
    REQUIRE(server != nullptr);
    if (start) loop->Start();
    auto make = [this]() -> LoopStream<AgentMessage, HeadToAgent>* {
      return new EchoStream(loop.get(), &counters);
    };
    make()->Listen(
        [this](grpc::ServerContext* context,
               grpc::ServerAsyncReaderWriter<HeadToAgent, AgentMessage>* stream,
               grpc::ServerCompletionQueue* cq,
               void* tag) { service.RequestConnect(context, stream, cq, cq, tag); },
        make);
    stub = dragon::v1::AgentService::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }
  ~Bed() { loop->Stop(server.get(), absl::Milliseconds(200)); }

  // Waits (at most 10 s) until only the stream listening for the next call is alive.
  bool OnlyListenerLeft() {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (counters.live.load() != 1) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }
};

AgentMessage Beat(uint64_t seq, uint32_t busy = 0) {
  AgentMessage m;
  m.mutable_heartbeat()->set_ping_seq(seq);
  m.mutable_heartbeat()->set_busy_workers(busy);
  return m;
}

TEST_CASE("a loop stream echoes in order and is released when the client closes") {
  Bed bed;
  grpc::ClientContext context;
  std::unique_ptr<ClientStream> stream = bed.stub->Connect(&context);
  // Writes race the echoes: up to 100 messages in flight at once.
  for (uint64_t i = 1; i <= 100; ++i) REQUIRE(stream->Write(Beat(i)));
  for (uint64_t i = 1; i <= 100; ++i) {
    HeadToAgent got;
    REQUIRE(stream->Read(&got));
    CHECK(got.ping().seq() == i);
  }
  REQUIRE(stream->WritesDone());
  HeadToAgent extra;
  CHECK_FALSE(stream->Read(&extra));
  CHECK(stream->Finish().ok());
  CHECK(bed.counters.begun.load() == 1);
  CHECK(bed.OnlyListenerLeft());
  CHECK(bed.counters.closed.load() == 1);
  CHECK(bed.counters.cancelled.load() == 0);
}

TEST_CASE("a loop stream tells a cancelled call from a half-closed one") {
  Bed bed;
  for (int i = 0; i < 20; ++i) {  // the order of the failed read and the call's end varies
    grpc::ClientContext context;
    std::unique_ptr<ClientStream> stream = bed.stub->Connect(&context);
    REQUIRE(stream->Write(Beat(1)));
    HeadToAgent got;
    REQUIRE(stream->Read(&got));
    context.TryCancel();
    CHECK(stream->Finish().error_code() == grpc::StatusCode::CANCELLED);
    REQUIRE(bed.OnlyListenerLeft());
  }
  CHECK(bed.counters.cancelled.load() == 20);
  CHECK(bed.counters.closed.load() == 0);
}

TEST_CASE("a loop stream that finishes with its read in flight is released once the read is back") {
  Bed bed;
  grpc::ClientContext context;
  std::unique_ptr<ClientStream> stream = bed.stub->Connect(&context);
  REQUIRE(stream->Write(Beat(1)));
  HeadToAgent got;
  REQUIRE(stream->Read(&got));
  REQUIRE(stream->Write(Beat(2, kFinishNow)));
  CHECK_FALSE(stream->Read(&got));
  const grpc::Status status = stream->Finish();
  CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(status.error_message() == "told to");
  CHECK(bed.OnlyListenerLeft());
}

TEST_CASE("several loop streams at once, each in its own order") {
  Bed bed;
  constexpr int kStreams = 8;
  std::vector<std::thread> clients;
  std::atomic<int> good{0};
  for (int s = 0; s < kStreams; ++s) {
    clients.emplace_back([&bed, &good, s] {
      grpc::ClientContext context;
      std::unique_ptr<ClientStream> stream = bed.stub->Connect(&context);
      bool ok = true;
      for (uint64_t i = 1; i <= 200 && ok; ++i) {
        ok = stream->Write(Beat(s * 1000 + i));
        HeadToAgent got;
        ok = ok && stream->Read(&got) && got.ping().seq() == s * 1000 + i;
      }
      ok = ok && stream->WritesDone() && stream->Finish().ok();
      if (ok) ++good;
    });
  }
  for (auto& t : clients) t.join();
  CHECK(good.load() == kStreams);
  CHECK(bed.counters.begun.load() == kStreams);
  CHECK(bed.OnlyListenerLeft());
}

TEST_CASE("stopping the loop ends open streams and releases every stream object") {
  auto bed = std::make_unique<Bed>();
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<ClientStream>> streams;
  for (int s = 0; s < 3; ++s) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(bed->stub->Connect(contexts.back().get()));
    REQUIRE(streams.back()->Write(Beat(7)));
    HeadToAgent got;
    REQUIRE(streams.back()->Read(&got));
  }
  CHECK(bed->counters.live.load() == 4);  // three calls and the listener
  Counters* counters = &bed->counters;
  bed->loop->Stop(bed->server.get(), absl::Milliseconds(100));
  CHECK(counters->live.load() == 0);
  for (auto& stream : streams) {
    HeadToAgent got;
    CHECK_FALSE(stream->Read(&got));
    CHECK_FALSE(stream->Finish().ok());
  }
}

TEST_CASE("a stopped loop refuses new operations") {
  Bed bed;
  bed.loop->Stop(bed.server.get(), absl::Milliseconds(100));
  bool ran = false;
  CHECK_FALSE(bed.loop->StartOp([&ran] { ran = true; }));
  CHECK_FALSE(ran);
  CHECK(bed.counters.live.load() == 0);
  bed.loop->Stop(bed.server.get(), absl::Milliseconds(100));  // again: nothing happens
}

TEST_CASE("a loop that never started releases its listener when stopped") {
  Bed bed(/*start=*/false);
  CHECK(bed.counters.live.load() == 1);
  bed.loop->Stop(bed.server.get(), absl::Milliseconds(100));
  CHECK(bed.counters.live.load() == 0);
}

}  // namespace
}  // namespace dragon::daemon
