// HeadConnection against a scripted head: a real in-process gRPC server whose
// AgentService.Connect plays one script per test. Covers the stream's loop
// (tasks in, a result and a heartbeat queued from another thread while the
// loop waits, the head's shutdown), the head's refusal surfacing with its
// reason, a head that never answers Register, and Stop.
#include "agent/head_connection.h"

#include <catch2/catch.hpp>

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "proto/agent.grpc.pb.h"

namespace dragon::agent {
namespace {

using HeadStream = grpc::ServerReaderWriter<v1::HeadToAgent, v1::AgentMessage>;
using Script = std::function<grpc::Status(grpc::ServerContext*, HeadStream*)>;

class ScriptedHead final : public v1::AgentService::Service {
 public:
  explicit ScriptedHead(Script script) : script_(std::move(script)) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~ScriptedHead() override { server_->Shutdown(); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  grpc::Status Connect(grpc::ServerContext* context, HeadStream* stream) override {
    return script_(context, stream);
  }

 private:
  Script script_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// Reads Register and answers Registered; false if the agent sent no Register.
bool Register(HeadStream* stream) {
  v1::AgentMessage hello;
  if (!stream->Read(&hello) || !hello.has_register_()) return false;
  v1::HeadToAgent reply;
  reply.mutable_registered()->set_protocol_version(v1::PROTOCOL_VERSION_CURRENT);
  reply.mutable_registered()->set_run_id("test-run");
  reply.mutable_registered()->set_heartbeat_timeout_ms(60'000);
  reply.mutable_registered()->set_incarnation(1);
  return stream->Write(reply);
}

// Reads until a message `want` accepts; false if the stream ends first.
bool ReadUntil(HeadStream* stream, const std::function<bool(const v1::AgentMessage&)>& want) {
  v1::AgentMessage in;
  while (stream->Read(&in)) {
    if (want(in)) return true;
  }
  return false;
}

// The pool's side, as the worker pool is: what the head sends is queued for
// a thread of its own, which reports back to the connection (the sink).
class ThreadedHandler final : public TaskHandler {
 public:
  explicit ThreadedHandler(HeadConnection* sink) : sink_(sink), thread_([this] { Loop(); }) {}
  ~ThreadedHandler() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  void SubmitTasks(std::vector<v1::TaskAssignment> tasks) override {
    Post([this, tasks = std::move(tasks)] {
      for (const auto& t : tasks) {
        v1::TaskResult result;
        result.set_task_id(t.task_id());
        result.set_data("done:" + t.payload());
        sink_->TaskFinished(std::move(result));
      }
    });
  }
  void CancelTasks(std::vector<uint64_t>, std::string) override {}
  void ReclaimTasks(std::vector<uint64_t> task_ids) override {
    Post([this, task_ids = std::move(task_ids)] { sink_->TasksReleased(task_ids); });
  }
  void Ping(uint64_t seq) override {
    Post([this, seq] {
      v1::Heartbeat beat;
      beat.set_ping_seq(seq);
      sink_->Heartbeat(std::move(beat));
    });
  }
  int BusyWorkers() const override { return 0; }

 private:
  void Post(std::function<void()> f) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(f));
    }
    cv_.notify_all();
  }
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return done_ || !queue_.empty(); });
      if (queue_.empty()) return;
      std::function<void()> f = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      f();
      lock.lock();
    }
  }

  HeadConnection* sink_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool done_ = false;
  std::thread thread_;
};

HeadConnectionOptions OptionsFor(const ScriptedHead& head) {
  HeadConnectionOptions options;
  options.head_address = head.address();
  options.registration.set_node_id("n1");
  options.connect_timeout = absl::Seconds(5);
  return options;
}

TEST_CASE("tasks in, their results and the pool's heartbeats out, until the head's shutdown") {
  constexpr int kTasks = 50;
  std::vector<uint64_t> results;  // in the order the head got them
  uint64_t answered_ping = 0;
  ScriptedHead head([&](grpc::ServerContext*, HeadStream* stream) {
    if (!Register(stream)) return grpc::Status(grpc::StatusCode::INTERNAL, "no Register");
    // One task at a time: each result is queued by the pool's thread while
    // the connection's loop waits with nothing to write, and must wake it.
    for (int i = 1; i <= kTasks; ++i) {
      v1::HeadToAgent out;
      v1::TaskAssignment* task = out.mutable_tasks()->add_tasks();
      task->set_task_id(i);
      task->set_payload("p" + std::to_string(i));
      if (!stream->Write(out)) return grpc::Status(grpc::StatusCode::INTERNAL, "write");
      bool got = ReadUntil(stream, [&](const v1::AgentMessage& in) {
        for (const auto& r : in.update().results()) {
          results.push_back(r.task_id());
          if (r.data() != "done:p" + std::to_string(r.task_id())) return false;
        }
        return !in.update().results().empty();
      });
      if (!got) return grpc::Status(grpc::StatusCode::INTERNAL, "no result");
    }
    v1::HeadToAgent ping;
    ping.mutable_ping()->set_seq(42);
    stream->Write(ping);
    ReadUntil(stream, [&](const v1::AgentMessage& in) {
      answered_ping = in.heartbeat().ping_seq();
      return in.has_heartbeat();
    });
    v1::HeadToAgent bye;
    bye.mutable_shutdown()->set_reason("test over");
    stream->Write(bye);
    // The agent closes its side; the stream ends when it has.
    ReadUntil(stream, [](const v1::AgentMessage&) { return false; });
    return grpc::Status::OK;
  });

  HeadConnection conn(OptionsFor(head));
  REQUIRE(conn.Connect().ok());
  CHECK(conn.registered().run_id() == "test-run");
  absl::Status status;
  {
    ThreadedHandler handler(&conn);
    // The loop waits up to 15 s (a quarter of the ping timeout) when nothing
    // wakes it: a result that fails to wake it shows as this test's failure.
    std::future<absl::Status> run =
        std::async(std::launch::async, [&] { return conn.Run(&handler); });
    const bool done_in_time = run.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    if (!done_in_time) conn.Stop("the test timed out");
    status = run.get();
    INFO("results the head got: " << results.size() << " of " << kTasks);
    REQUIRE(done_in_time);
  }
  CHECK(status.ok());
  REQUIRE(results.size() == kTasks);
  for (int i = 0; i < kTasks; ++i) CHECK(results[i] == static_cast<uint64_t>(i + 1));
  CHECK(answered_ping == 42);
}

TEST_CASE("a head that refuses the agent: Connect says why at once, no retry") {
  int calls = 0;
  ScriptedHead head([&](grpc::ServerContext*, HeadStream* stream) {
    ++calls;
    v1::AgentMessage hello;
    stream->Read(&hello);
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong token");
  });
  HeadConnection conn(OptionsFor(head));
  const absl::Status status = conn.Connect();
  CHECK(absl::IsUnauthenticated(status));
  CHECK(std::string(status.message()).find("wrong token") != std::string::npos);
  CHECK(calls == 1);
}

TEST_CASE("a head that never answers Register: Connect gives up at its deadline") {
  ScriptedHead head([](grpc::ServerContext*, HeadStream* stream) {
    v1::AgentMessage hello;
    stream->Read(&hello);
    stream->Read(&hello);  // returns (false) when the agent cancels the call
    return grpc::Status::CANCELLED;
  });
  HeadConnection conn(OptionsFor(head));
  const absl::Status status = conn.Connect(0, absl::Seconds(1));
  CHECK(absl::IsUnavailable(status));
  CHECK(std::string(status.message()).find("no answer to Register") != std::string::npos);
}

TEST_CASE("Stop from another thread ends Run with OK, the head seeing the stream end") {
  bool stream_ended = false;
  std::mutex mu;
  std::condition_variable registered;
  bool is_registered = false;
  ScriptedHead head([&](grpc::ServerContext*, HeadStream* stream) {
    if (!Register(stream)) return grpc::Status(grpc::StatusCode::INTERNAL, "no Register");
    {
      std::lock_guard<std::mutex> lock(mu);
      is_registered = true;
    }
    registered.notify_all();
    stream_ended = !ReadUntil(stream, [](const v1::AgentMessage&) { return false; });
    return grpc::Status::OK;
  });
  HeadConnection conn(OptionsFor(head));
  REQUIRE(conn.Connect().ok());
  std::thread stopper([&] {
    std::unique_lock<std::mutex> lock(mu);
    registered.wait(lock, [&] { return is_registered; });
    conn.Stop("test");
  });
  absl::Status status;
  {
    ThreadedHandler handler(&conn);
    status = conn.Run(&handler);
  }
  stopper.join();
  CHECK(status.ok());
  CHECK(stream_ended);
}

}  // namespace
}  // namespace dragon::agent
