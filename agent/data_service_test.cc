#include "agent/data_service.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/data_socket_client.h"
#include "proto/agent.pb.h"
#include "common/test_dir.h"

namespace dragon::agent {
namespace {

// A private directory, removed with everything in it.
struct TempDir : common::TestDir {
  TempDir() : TestDir("/tmp/dragon-data-service-test-") {}
};

// Records each call and answers what the test says.
struct FakeMover : BlockMover {
  struct Call {
    bool push = false;
    std::string node_id;
    common::BlockRef ref;
    uint64_t size = 0;
    pid_t owner = 0;
    absl::Duration timeout;
  };
  absl::StatusOr<common::BlockRef> Pull(const std::string& node_id, const common::BlockRef& ref,
                                        uint64_t size, pid_t owner, absl::Duration timeout) override {
    return Record({false, node_id, ref, size, owner, timeout});
  }
  absl::StatusOr<common::BlockRef> Push(const std::string& node_id, const common::BlockRef& ref,
                                        uint64_t size, pid_t owner, absl::Duration timeout) override {
    return Record({true, node_id, ref, size, owner, timeout});
  }
  absl::StatusOr<common::BlockRef> Record(Call call) {
    absl::MutexLock lock(&mu);
    calls.push_back(call);
    return answer;
  }
  absl::Mutex mu;
  std::vector<Call> calls;
  absl::StatusOr<common::BlockRef> answer = common::BlockRef{4096, 8192, 7};
};

// Calls `method` of the service at `socket` with `request`; the reply parsed into *reply.
template <typename Request, typename Reply>
absl::Status CallService(const std::string& socket, common::DataMethod method, const Request& request,
                         Reply* reply) {
  common::DataCallResult r =
      common::CallDataSocket(socket, method, request.SerializeAsString(), absl::Seconds(10));
  if (!r.status.ok()) return r.status;
  REQUIRE(reply->ParseFromString(r.reply));
  return absl::OkStatus();
}

v1::BlockTransfer Transfer(const std::string& node, const common::BlockRef& ref, uint64_t size,
                           int32_t owner, uint32_t timeout_ms = 0) {
  v1::BlockTransfer t;
  t.set_node_id(node);
  t.set_ref(ref.Encode());
  t.set_size(size);
  t.set_owner_pid(owner);
  t.set_timeout_ms(timeout_ms);
  return t;
}

absl::Status Call(const std::string& socket, bool push, const v1::BlockTransfer& request,
                  v1::BlockTransferred* reply) {
  return CallService(socket, push ? common::DataMethod::kPush : common::DataMethod::kPull, request,
                     reply);
}

TEST_CASE("the service is a mode 0600 socket, passes Pull and Push to the mover, and removes its socket") {
  TempDir dir;
  const std::string socket = dir.path + "/dragon-pool-1-n1-2.sock";
  FakeMover mover;
  {
    absl::StatusOr<std::unique_ptr<DataService>> service = DataService::Start(socket, &mover);
    REQUIRE(service.ok());
    struct stat st {};
    REQUIRE(lstat(socket.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0600);

    const common::BlockRef source{1 << 20, 1 << 20, 3};
    v1::BlockTransferred reply;
    REQUIRE(Call(socket, false, Transfer("n2", source, 1000, 4242, 1500), &reply).ok());
    CHECK(*common::BlockRef::Decode(reply.ref()) == common::BlockRef{4096, 8192, 7});
    REQUIRE(Call(socket, true, Transfer("n3", source, 10, 77), &reply).ok());
    absl::MutexLock lock(&mover.mu);
    REQUIRE(mover.calls.size() == 2);
    CHECK_FALSE(mover.calls[0].push);
    CHECK(mover.calls[0].node_id == "n2");
    CHECK(mover.calls[0].ref == source);
    CHECK(mover.calls[0].size == 1000);
    CHECK(mover.calls[0].owner == 4242);
    CHECK(mover.calls[0].timeout == absl::Milliseconds(1500));
    CHECK(mover.calls[1].push);
    CHECK(mover.calls[1].node_id == "n3");
    CHECK(mover.calls[1].timeout == absl::ZeroDuration());  // the plane's default
  }
  CHECK_FALSE(std::filesystem::exists(socket));
}

TEST_CASE("the mover's errors come back with the same code and message") {
  TempDir dir;
  FakeMover mover;
  auto service = DataService::Start(dir.path + "/s.sock", &mover);
  REQUIRE(service.ok());
  const std::string socket = dir.path + "/s.sock";
  const absl::Status cases[] = {
      absl::ResourceExhaustedError("pool full: raise --shm-pool-mb"),
      absl::UnavailableError("node n2 lost"),
      absl::NotFoundError("node n9 has no data plane"),
      absl::DeadlineExceededError("slow"),
      absl::FailedPreconditionError("pid 5 is dead"),
  };
  for (const absl::Status& status : cases) {
    {
      absl::MutexLock lock(&mover.mu);
      mover.answer = status;
    }
    v1::BlockTransferred reply;
    absl::Status got = Call(socket, true, Transfer("n2", {0, 64, 1}, 8, 1), &reply);
    CHECK(got.code() == status.code());
    CHECK(got.message() == status.message());
  }
}

TEST_CASE("bad requests are refused naming the field, and never reach the mover") {
  TempDir dir;
  FakeMover mover;
  auto service = DataService::Start(dir.path + "/s.sock", &mover);
  REQUIRE(service.ok());
  const std::string socket = dir.path + "/s.sock";
  v1::BlockTransferred reply;

  v1::BlockTransfer no_node = Transfer("", {0, 64, 1}, 8, 1);
  absl::Status s = Call(socket, false, no_node, &reply);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(s.message(), "node_id"));

  v1::BlockTransfer bad_ref = Transfer("n2", {0, 64, 1}, 8, 1);
  bad_ref.set_ref("not a ref");
  s = Call(socket, false, bad_ref, &reply);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(s.message(), "BlockTransfer.ref"));

  s = Call(socket, true, Transfer("n2", {0, 64, 1}, 8, 0), &reply);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(s.message(), "owner_pid 0"));
  s = Call(socket, true, Transfer("n2", {0, 64, 1}, 8, -3), &reply);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);

  // Bytes that are not the method's message, and a method the service lacks.
  common::DataCallResult raw =
      common::CallDataSocket(socket, common::DataMethod::kPull, "\xff\xff\xff", absl::Seconds(10));
  CHECK(raw.status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(raw.status.message(), "not a serialized dragon.v1.BlockTransfer"));
  raw = common::CallDataSocket(socket, static_cast<common::DataMethod>(42), "", absl::Seconds(10));
  CHECK(raw.status.code() == absl::StatusCode::kUnimplemented);
  CHECK(absl::StrContains(raw.status.message(), "method 42"));

  absl::MutexLock lock(&mover.mu);
  CHECK(mover.calls.empty());
}

TEST_CASE("Dict without a handler is Unimplemented; with one, its answer") {
  TempDir dir;
  FakeMover mover;
  int calls = 0;
  auto service = DataService::Start(dir.path + "/d.sock", &mover,
                                    [&](const v1::DictRequest& request) -> absl::StatusOr<v1::DictReply> {
                                      ++calls;
                                      if (request.dict_id().empty()) return absl::InvalidArgumentError("no dict_id");
                                      v1::DictReply reply;
                                      reply.set_count(3);
                                      return reply;
                                    });
  REQUIRE(service.ok());
  const std::string socket = dir.path + "/d.sock";
  v1::DictRequest request;
  request.set_dict_id("d1");
  v1::DictReply reply;
  REQUIRE(CallService(socket, common::DataMethod::kDict, request, &reply).ok());
  CHECK(reply.count() == 3);
  CHECK(CallService(socket, common::DataMethod::kDict, v1::DictRequest(), &reply).code() ==
        absl::StatusCode::kInvalidArgument);
  {
    // A large value (a Dictionary PUT): more than one frame buffer, in one call.
    v1::DictRequest put;
    put.set_dict_id("d1");
    put.add_values(std::string(8 << 20, 'v'));
    REQUIRE(CallService(socket, common::DataMethod::kDict, put, &reply).ok());
  }
  CHECK(calls == 3);

  auto plain = DataService::Start(dir.path + "/p.sock", &mover);
  REQUIRE(plain.ok());
  CHECK(CallService(dir.path + "/p.sock", common::DataMethod::kDict, request, &reply).code() ==
        absl::StatusCode::kUnimplemented);
  CHECK(CallService(dir.path + "/p.sock", common::DataMethod::kChannel, v1::ChannelRequest(), &reply)
            .code() == absl::StatusCode::kUnimplemented);
}

// A Unix socket at `path` that nobody serves, as a SIGKILLed agent leaves it.
void LeaveDeadSocket(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  close(fd);
}

TEST_CASE("a dead agent's socket at the same path is replaced") {
  TempDir dir;
  const std::string socket = dir.path + "/adopted.sock";
  LeaveDeadSocket(socket);
  FakeMover mover;
  auto service = DataService::Start(socket, &mover);
  REQUIRE(service.ok());
  v1::BlockTransferred reply;
  CHECK(Call(socket, false, Transfer("n2", {0, 64, 1}, 8, 1), &reply).ok());
}

TEST_CASE("a socket path too long for a Unix socket is refused naming it") {
  FakeMover mover;
  const std::string path = "/tmp/" + std::string(120, 'x') + ".sock";
  auto service = DataService::Start(path, &mover);
  REQUIRE(service.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(service.status().message(), path));
}

TEST_CASE("RemoveOrphanDataSockets removes sockets whose pool file is gone, and nothing else") {
  TempDir dir;
  const std::string live_pool = dir.path + "/dragon-pool-1-n1-10";
  const std::string orphan = dir.path + "/dragon-pool-1-n2-11.sock";
  std::ofstream(live_pool) << "pool";
  LeaveDeadSocket(live_pool + ".sock");
  LeaveDeadSocket(orphan);
  LeaveDeadSocket(dir.path + "/other-12.sock");                 // not an agent's
  std::ofstream(dir.path + "/dragon-pool-1-n3-13.sock") << "x";  // not a socket
  CHECK(RemoveOrphanDataSockets(dir.path, "dragon-pool-") == 1);
  CHECK_FALSE(std::filesystem::exists(orphan));
  CHECK(std::filesystem::exists(live_pool + ".sock"));
  CHECK(std::filesystem::exists(dir.path + "/other-12.sock"));
  CHECK(std::filesystem::exists(dir.path + "/dragon-pool-1-n3-13.sock"));
  CHECK(RemoveOrphanDataSockets(dir.path + "/missing", "dragon-pool-") == 0);
}

}  // namespace
}  // namespace dragon::agent
