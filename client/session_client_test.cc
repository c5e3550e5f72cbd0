// SessionClient against an in-process HeadService test double (unit test
// only; tests/test_executables.py and bench/native_bench run it against the
// real dragond) and against a closed port.
#include "client/session_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"

namespace dragon::client {
namespace {

using dragon::v1::HeadService;

// Echoes every submission back as an OK result whose data is the payload.
class TestHead final : public HeadService::Service {
 public:
  // kHold: accepts tasks and never sends their results (they stay in flight).
  // kAcceptedInResults: ids in each ResultBatch (as a head holding them does).
  enum class Mode {
    kEcho,
    kRefuse,
    kWrongVersion,
    kSilent,
    kBreakAfterFirstBatch,
    kHold,
    kAcceptedInResults
  };
  std::atomic<Mode> mode{Mode::kEcho};
  std::mutex mu;
  std::vector<int> batch_sizes;     // tasks per SubmitBatch received
  std::vector<size_t> batch_bytes;  // payload bytes per SubmitBatch
  std::map<uint64_t, std::string> data_node_by_ref;  // TaskSubmission.data_node received
  std::string hello_cwd;
  bool hello_accepted_with_results = false;
  std::atomic<bool> stream_ended{false};

  grpc::Status Session(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<dragon::v1::HeadMessage, dragon::v1::ClientMessage>*
                           stream) override {
    dragon::v1::ClientMessage msg;
    if (!stream->Read(&msg) || !msg.has_hello()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no Hello");
    }
    {
      std::lock_guard<std::mutex> l(mu);
      hello_cwd = msg.hello().cwd();
      hello_accepted_with_results = msg.hello().accepted_with_results();
    }
    switch (mode.load()) {
      case Mode::kRefuse:
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "client speaks protocol version 1 but this dragond speaks version 2");
      case Mode::kSilent:
        while (!context->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return grpc::Status::CANCELLED;
      default:
        break;
    }
    dragon::v1::HeadMessage welcome;
    welcome.mutable_welcome()->set_protocol_version(
        mode == Mode::kWrongVersion ? 99 : kSessionProtocolVersion);
    welcome.mutable_welcome()->set_session_id(7);
    welcome.mutable_welcome()->set_head_version("test");
    stream->Write(welcome);
    uint64_t next_id = 1000;
    while (stream->Read(&msg)) {
      REQUIRE(msg.has_submit());
      size_t bytes = 0;
      dragon::v1::HeadMessage accepted, results;
      for (const auto& t : msg.submit().tasks()) {
        bytes += t.payload().size();
        accepted.mutable_accepted()->add_client_refs(t.client_ref());
        accepted.mutable_accepted()->add_task_ids(next_id);
        auto* r = results.mutable_results()->add_results();
        r->set_client_ref(t.client_ref());
        r->set_task_id(next_id);
        r->mutable_result()->set_task_id(next_id);
        r->mutable_result()->set_outcome(dragon::v1::OK);
        r->mutable_result()->set_data(t.payload());
        ++next_id;
      }
      {
        std::lock_guard<std::mutex> l(mu);
        batch_sizes.push_back(msg.submit().tasks_size());
        batch_bytes.push_back(bytes);
        for (const auto& t : msg.submit().tasks()) data_node_by_ref[t.client_ref()] = t.data_node();
      }
      if (mode == Mode::kBreakAfterFirstBatch) {
        return grpc::Status(grpc::StatusCode::INTERNAL, "head exploded");
      }
      if (mode == Mode::kAcceptedInResults) {
        *results.mutable_results()->mutable_accepted() = accepted.accepted();
        stream->Write(results);
        continue;
      }
      stream->Write(accepted);
      if (mode != Mode::kHold) stream->Write(results);
    }
    stream_ended = true;
    return grpc::Status::OK;
  }
};

struct Server {
  TestHead service;
  std::unique_ptr<grpc::Server> server;
  std::string address;

  Server() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(64 << 20);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    REQUIRE(server != nullptr);
    address = absl::StrCat("127.0.0.1:", port);
  }
  ~Server() { server->Shutdown(std::chrono::system_clock::now()); }
};

std::string ClosedPortAddress() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  close(fd);
  return absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
}

// Collects what the receiver thread delivers.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, std::string> data_by_ref;
  uint64_t accepted = 0;
  std::string events;  // 'a' per on_accepted, 'r' per on_results, in order
  bool ended = false;
  absl::Status end_status;

  SessionCallbacks Callbacks() {
    SessionCallbacks cb;
    cb.on_results = [this](dragon::v1::ResultBatch* batch) {
      std::lock_guard<std::mutex> l(mu);
      events += 'r';
      for (auto& r : *batch->mutable_results()) {
        data_by_ref[r.client_ref()] = std::move(*r.mutable_result()->mutable_data());
      }
      cv.notify_all();
    };
    cb.on_accepted = [this](const dragon::v1::Accepted& a) {
      std::lock_guard<std::mutex> l(mu);
      accepted += static_cast<uint64_t>(a.task_ids_size());
      events += 'a';
    };
    cb.on_end = [this](const absl::Status& s) {
      std::lock_guard<std::mutex> l(mu);
      ended = true;
      end_status = s;
      cv.notify_all();
    };
    return cb;
  }
  bool WaitFor(size_t results, std::chrono::milliseconds within) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, within, [&] { return data_by_ref.size() >= results; });
  }
  bool WaitEnded(std::chrono::milliseconds within) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, within, [&] { return ended; });
  }
};

// Polls `done` for up to 5 s: the sender is a real thread, its progress is
// seen from outside (the checks after the call say what was expected).
void WaitUntil(const std::function<bool()>& done) {
  for (int i = 0; i < 500 && !done(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

dragon::v1::TaskSubmission Task(uint64_t ref, std::string payload) {
  dragon::v1::TaskSubmission t;
  t.set_client_ref(ref);
  t.set_kind(dragon::v1::PYTHON);
  t.set_payload(std::move(payload));
  return t;
}

TEST_CASE("Hello/Welcome, then thousands of tasks in capped batches, every result delivered") {
  Server server;
  Collector got;
  SessionOptions o;
  o.address = server.address;
  o.cwd = "/some/dir";
  auto session = SessionClient::Connect(o, got.Callbacks());
  REQUIRE(session.ok());
  CHECK((*session)->welcome().session_id() == 7);

  constexpr int kTasks = 5000;
  for (int i = 1; i <= kTasks; ++i) {
    REQUIRE((*session)->Submit(Task(i, absl::StrCat("p", i))).ok());
  }
  REQUIRE(got.WaitFor(kTasks, std::chrono::seconds(20)));
  CHECK((*session)->Close().ok());
  CHECK(got.data_by_ref.size() == kTasks);
  CHECK(got.data_by_ref[1] == "p1");
  CHECK(got.data_by_ref[kTasks] == absl::StrCat("p", kTasks));
  CHECK(got.accepted == kTasks);
  CHECK(got.ended);
  CHECK(got.end_status.ok());
  CHECK(server.service.stream_ended);
  CHECK(server.service.hello_cwd == "/some/dir");
  std::lock_guard<std::mutex> l(server.service.mu);
  int total = 0;
  for (int n : server.service.batch_sizes) {
    CHECK(n >= 1);
    CHECK(n <= 1000);
    total += n;
  }
  CHECK(total == kTasks);
  // Batched: far fewer messages than tasks.
  CHECK(server.service.batch_sizes.size() < kTasks / 5);
  CHECK((*session)->tasks_sent() == kTasks);
  CHECK((*session)->lingers() == 0);  // linger is off by default
}

TEST_CASE("ids a ResultBatch carries reach on_accepted before its results") {
  Server server;
  server.service.mode = TestHead::Mode::kAcceptedInResults;
  Collector got;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, got.Callbacks());
  REQUIRE(session.ok());
  for (int i = 1; i <= 3; ++i) {
    REQUIRE((*session)->Submit(Task(i, "x")).ok());
    REQUIRE(got.WaitFor(static_cast<size_t>(i), std::chrono::seconds(5)));
  }
  CHECK((*session)->Close().ok());
  CHECK(got.accepted == 3);
  CHECK(got.events == "ararar");
  std::lock_guard<std::mutex> l(server.service.mu);
  CHECK(server.service.hello_accepted_with_results);  // asked by default
}

TEST_CASE("a client can ask for every Accepted as the head gives it") {
  Server server;
  Collector got;
  SessionOptions o;
  o.address = server.address;
  o.accepted_with_results = false;
  auto session = SessionClient::Connect(o, got.Callbacks());
  REQUIRE(session.ok());
  REQUIRE((*session)->Submit(Task(1, "x")).ok());
  REQUIRE(got.WaitFor(1, std::chrono::seconds(5)));
  CHECK((*session)->Close().ok());
  std::lock_guard<std::mutex> l(server.service.mu);
  CHECK_FALSE(server.service.hello_accepted_with_results);
}

TEST_CASE("a lone task leaves at once (no waiting for a batch to fill)") {
  Server server;
  Collector got;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, got.Callbacks());
  REQUIRE(session.ok());
  const auto start = std::chrono::steady_clock::now();
  REQUIRE((*session)->Submit(Task(1, "x")).ok());
  REQUIRE(got.WaitFor(1, std::chrono::seconds(5)));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(500));
  CHECK((*session)->Close().ok());
}

TEST_CASE("a lone small task is written by Submit itself; with one in flight the sender takes over") {
  Server server;
  server.service.mode = TestHead::Mode::kHold;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, {});
  REQUIRE(session.ok());
  // Nothing in flight, nothing queued: sent before Submit returns (no sender wake-up).
  REQUIRE((*session)->Submit(Task(1, "a")).ok());
  CHECK((*session)->tasks_sent() == 1);
  CHECK((*session)->batches_sent() == 1);
  // One in flight (the head holds its result): queued for the sender, in order.
  REQUIRE((*session)->Submit(Task(2, "b")).ok());
  REQUIRE((*session)->Submit(Task(3, "c")).ok());
  WaitUntil([&] { return (*session)->tasks_sent() >= 3; });
  CHECK((*session)->tasks_sent() == 3);
  CHECK((*session)->Close(absl::Seconds(10)).ok());
  std::lock_guard<std::mutex> l(server.service.mu);
  int total = 0;
  for (int n : server.service.batch_sizes) total += n;
  CHECK(total == 3);
  CHECK(server.service.batch_sizes.front() == 1);
}

TEST_CASE("a lone task over the inline size goes through the sender") {
  Server server;
  server.service.mode = TestHead::Mode::kHold;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, {});
  REQUIRE(session.ok());
  // Submit returns without writing (the counter moves only once the sender has sent it).
  REQUIRE((*session)->Submit(Task(1, std::string(64 << 10, 'x'))).ok());
  WaitUntil([&] { return (*session)->tasks_sent() >= 1; });
  CHECK((*session)->tasks_sent() == 1);
  CHECK((*session)->Close(absl::Seconds(10)).ok());
}

TEST_CASE("sequential round trips and threads submitting at once: every task sent once, every result in") {
  Server server;
  Collector got;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, got.Callbacks());
  REQUIRE(session.ok());
  // One at a time: each goes inline (nothing in flight once its result is in).
  for (int i = 1; i <= 50; ++i) {
    REQUIRE((*session)->Submit(Task(i, absl::StrCat("s", i))).ok());
    REQUIRE(got.WaitFor(static_cast<size_t>(i), std::chrono::seconds(5)));
  }
  // Four threads at once: inline sends and the sender's batches interleave.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        const uint64_t ref = 1000 + static_cast<uint64_t>(t) * 1000 + static_cast<uint64_t>(i);
        REQUIRE((*session)->Submit(Task(ref, absl::StrCat("t", ref))).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  REQUIRE(got.WaitFor(50 + 2000, std::chrono::seconds(20)));
  CHECK((*session)->Close().ok());
  CHECK(got.data_by_ref.size() == 2050);
  CHECK(got.data_by_ref[1030] == "t1030");
  CHECK((*session)->tasks_sent() == 2050);
  std::lock_guard<std::mutex> l(server.service.mu);
  int total = 0;
  for (int n : server.service.batch_sizes) total += n;
  CHECK(total == 2050);  // none twice
}

TEST_CASE("a task's data node reaches the head as submitted") {
  Server server;
  Collector got;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, got.Callbacks());
  REQUIRE(session.ok());
  dragon::v1::TaskSubmission near = Task(1, "x");
  near.set_data_node("node-7");
  REQUIRE((*session)->Submit(std::move(near)).ok());
  REQUIRE((*session)->Submit(Task(2, "y")).ok());
  REQUIRE(got.WaitFor(2, std::chrono::seconds(5)));
  CHECK((*session)->Close().ok());
  std::lock_guard<std::mutex> l(server.service.mu);
  CHECK(server.service.data_node_by_ref[1] == "node-7");
  CHECK(server.service.data_node_by_ref[2].empty());
}

TEST_CASE("batches stop growing at the byte cap; a bigger task goes alone") {
  Server server;
  Collector got;
  SessionOptions o;
  o.address = server.address;
  o.max_batch_bytes = 1u << 20;
  auto session = SessionClient::Connect(o, got.Callbacks());
  REQUIRE(session.ok());
  std::vector<dragon::v1::TaskSubmission> tasks;
  for (int i = 1; i <= 8; ++i) tasks.push_back(Task(i, std::string(400 << 10, 'a')));
  tasks.push_back(Task(9, std::string(3 << 20, 'b')));  // over the cap by itself
  REQUIRE((*session)->SubmitMany(std::move(tasks)).ok());
  REQUIRE(got.WaitFor(9, std::chrono::seconds(20)));
  CHECK((*session)->Close().ok());
  CHECK(got.data_by_ref[9].size() == (3u << 20));
  std::lock_guard<std::mutex> l(server.service.mu);
  for (size_t i = 0; i < server.service.batch_bytes.size(); ++i) {
    INFO("batch " << i << " holds " << server.service.batch_sizes[i] << " tasks");
    if (server.service.batch_sizes[i] > 1) CHECK(server.service.batch_bytes[i] <= (1u << 20));
  }
  CHECK(server.service.batch_sizes.size() >= 5);
}

TEST_CASE("a closed port fails with 'cannot reach'") {
  const std::string address = ClosedPortAddress();
  SessionOptions o;
  o.address = address;
  o.connect_timeout = absl::Seconds(5);
  const auto start = std::chrono::steady_clock::now();
  auto session = SessionClient::Connect(o, {});
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(4));
  REQUIRE(!session.ok());
  CHECK(absl::IsUnavailable(session.status()));
  CHECK(std::string(session.status().message()).rfind("cannot reach dragond at " + address, 0) ==
        0);
}

TEST_CASE("a malformed address is refused before connecting") {
  SessionOptions o;
  o.address = "nohostport";
  auto session = SessionClient::Connect(o, {});
  CHECK(absl::IsInvalidArgument(session.status()));
}

TEST_CASE("the head's refusal of Hello is passed on with its reason") {
  Server server;
  server.service.mode = TestHead::Mode::kRefuse;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, {});
  REQUIRE(!session.ok());
  CHECK(absl::IsFailedPrecondition(session.status()));
  const std::string msg(session.status().message());
  INFO(msg);
  CHECK(msg.find("refused the session") != std::string::npos);
  CHECK(msg.find("speaks version 2") != std::string::npos);
}

TEST_CASE("a Welcome with another protocol version is refused") {
  Server server;
  server.service.mode = TestHead::Mode::kWrongVersion;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, {});
  REQUIRE(!session.ok());
  const std::string msg(session.status().message());
  INFO(msg);
  CHECK(msg.find("protocol version 99") != std::string::npos);
  // The binding builds its ProtocolMismatch from this field, not from the text.
  auto head_version = session.status().GetPayload(kHeadProtocolPayload);
  REQUIRE(head_version.has_value());
  CHECK(std::string(*head_version) == "99");
}

TEST_CASE("a head that never answers Hello times out") {
  Server server;
  server.service.mode = TestHead::Mode::kSilent;
  SessionOptions o;
  o.address = server.address;
  o.connect_timeout = absl::Milliseconds(500);
  const auto start = std::chrono::steady_clock::now();
  auto session = SessionClient::Connect(o, {});
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(3));
  CHECK(absl::IsDeadlineExceeded(session.status()));
  CHECK(std::string(session.status().message()).find("did not answer Hello") != std::string::npos);
}

TEST_CASE("a broken stream is reported to on_end (its gRPC status text also as a field) and to later submissions") {
  Server server;
  server.service.mode = TestHead::Mode::kBreakAfterFirstBatch;
  Collector got;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, got.Callbacks());
  REQUIRE(session.ok());
  REQUIRE((*session)->Submit(Task(1, "x")).ok());
  REQUIRE(got.WaitEnded(std::chrono::seconds(5)));
  CHECK(!got.end_status.ok());
  const std::string msg(got.end_status.message());
  INFO(msg);
  CHECK(msg.find("the session with dragond at " + server.address + " broke") == 0);
  CHECK(msg.find("head exploded") != std::string::npos);
  auto detail = got.end_status.GetPayload(kDetailPayload);
  REQUIRE(detail.has_value());
  CHECK(std::string(*detail).find("head exploded") != std::string::npos);
  CHECK(got.end_status.GetPayload(kGrpcStatusPayload).has_value());
  absl::Status later = (*session)->Submit(Task(2, "y"));
  CHECK(!later.ok());
  CHECK(later.message() == got.end_status.message());
  CHECK(!(*session)->Close().ok());
  CHECK(!(*session)->status().ok());
}

TEST_CASE("a client whose stream broke can be destroyed without Close") {
  Server server;
  server.service.mode = TestHead::Mode::kBreakAfterFirstBatch;
  Collector got;
  SessionOptions o;
  o.address = server.address;
  auto session = SessionClient::Connect(o, got.Callbacks());
  REQUIRE(session.ok());
  REQUIRE((*session)->Submit(Task(1, "x")).ok());
  REQUIRE(got.WaitEnded(std::chrono::seconds(5)));
  session->reset();  // joins the receiver; a joinable thread left behind would abort
  CHECK(got.ended);
}

TEST_CASE("with tasks in flight the sender lets a trickle gather into one message") {
  Server server;
  server.service.mode = TestHead::Mode::kHold;
  SessionOptions o;
  o.address = server.address;
  o.linger = absl::Hours(1);  // only Close ends this linger: no timing in the test
  o.linger_in_flight = 1;
  auto session = SessionClient::Connect(o, {});
  REQUIRE(session.ok());
  // Nothing in flight: the first task leaves at once.
  REQUIRE((*session)->Submit(Task(1, "a")).ok());
  WaitUntil([&] { return (*session)->tasks_sent() >= 1; });
  REQUIRE((*session)->tasks_sent() == 1);
  CHECK((*session)->lingers() == 0);
  // One in flight, no result: the next ones wait for each other.
  for (int i = 2; i <= 11; ++i) REQUIRE((*session)->Submit(Task(i, "b")).ok());
  WaitUntil([&] { return (*session)->lingers() > 0; });
  CHECK((*session)->lingers() == 1);
  CHECK((*session)->tasks_sent() == 1);  // still gathering
  CHECK((*session)->Close(absl::Seconds(10)).ok());
  std::lock_guard<std::mutex> l(server.service.mu);
  CHECK(server.service.batch_sizes == std::vector<int>{1, 10});
}

TEST_CASE("a full message already queued goes without lingering") {
  Server server;
  server.service.mode = TestHead::Mode::kHold;
  SessionOptions o;
  o.address = server.address;
  o.linger = absl::Hours(1);
  o.linger_in_flight = 1;
  o.max_batch_tasks = 100;
  auto session = SessionClient::Connect(o, {});
  REQUIRE(session.ok());
  REQUIRE((*session)->Submit(Task(1, "a")).ok());
  WaitUntil([&] { return (*session)->tasks_sent() >= 1; });
  std::vector<dragon::v1::TaskSubmission> burst;
  for (int i = 2; i <= 151; ++i) burst.push_back(Task(i, "b"));
  REQUIRE((*session)->SubmitMany(std::move(burst)).ok());
  WaitUntil([&] { return (*session)->tasks_sent() >= 151; });
  CHECK((*session)->tasks_sent() == 151);
  CHECK((*session)->lingers() == 0);
  CHECK((*session)->Close(absl::Seconds(10)).ok());
}

}  // namespace
}  // namespace dragon::client
