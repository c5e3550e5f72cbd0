// ClientDataPlane with an "agent" DataPlane in the same process, over UCX on
// loopback TCP: the agent pulls a client's argument block and pushes a result
// into the client's pool; the pool's file goes at once, the threads at stop.
#include "client/client_data_plane.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/test_dir.h"

namespace dragon::client {
namespace {

using agent::PeerInfo;
using common::BlockRef;
using common::ShmPool;

constexpr uint64_t kMiB = uint64_t{1} << 20;

// Peers by id, shared by every data plane of a test.
struct PeerMap {
  absl::Mutex mu;
  std::map<std::string, PeerInfo> peers;
};

class MapDirectory : public agent::PeerDirectory {
 public:
  explicit MapDirectory(PeerMap* map) : map_(map) {}
  absl::StatusOr<PeerInfo> Lookup(const std::string& id, bool) override {
    absl::MutexLock lock(&map_->mu);
    auto found = map_->peers.find(id);
    if (found == map_->peers.end()) return absl::NotFoundError(absl::StrCat("no peer ", id));
    return found->second;
  }

 private:
  PeerMap* map_;
};

struct ShmDir : common::TestDir {
  ShmDir() : TestDir("/dev/shm/dragon-client-plane-test-") {}
};

size_t Threads() {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) n += !e.path().empty();
  return n;
}

std::string Pattern(uint64_t size, uint8_t seed) {
  std::string bytes(size, '\0');
  for (uint64_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 131 + seed) & 0xff);
  return bytes;
}

BlockRef Write(ShmPool& pool, const std::string& bytes) {
  absl::StatusOr<BlockRef> ref = pool.Allocate(bytes.size());
  REQUIRE(ref.ok());
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(*ref);
  REQUIRE(span.ok());
  std::copy(bytes.begin(), bytes.end(), span->data());
  return *ref;
}

std::string Read(ShmPool& pool, const BlockRef& ref, uint64_t size) {
  absl::StatusOr<absl::Span<char>> span = pool.Resolve(ref);
  REQUIRE(span.ok());
  return std::string(span->data(), size);
}

TEST_CASE("an agent pulls a client's block and pushes into its pool; nothing stays") {
  setenv("UCX_TLS", "tcp,self", 1);
  ShmDir dir;
  const size_t threads_before = Threads();
  PeerMap map;
  {
    ClientDataPlaneOptions options;
    options.peer_id = "client-1";
    options.pool_bytes = 64 * kMiB;
    options.pool_dir = dir.path;
    absl::StatusOr<std::unique_ptr<ClientDataPlane>> client =
        ClientDataPlane::Start(options, std::make_unique<MapDirectory>(&map));
    INFO(client.status().ToString());
    REQUIRE(client.ok());
    CHECK(dir.Files() == 1);  // until the caller has mapped it too
    CHECK(absl::StartsWith(std::filesystem::path((*client)->pool_path()).filename().string(),
                           kClientPoolPrefix));
    REQUIRE((*client)->UnlinkPoolFile().ok());
    CHECK(dir.Files() == 0);
    CHECK((*client)->pool_bytes() == 64 * kMiB);

    common::ShmPoolOptions agent_pool_options;
    agent_pool_options.dir = dir.path;
    agent_pool_options.name = "agent-pool";
    agent_pool_options.size_bytes = 64 * kMiB;
    absl::StatusOr<std::unique_ptr<ShmPool>> agent_pool = ShmPool::Create(agent_pool_options);
    REQUIRE(agent_pool.ok());
    MapDirectory agent_directory(&map);
    agent::DataPlaneOptions agent_options;
    agent_options.node_id = "n1";
    absl::StatusOr<std::unique_ptr<agent::DataPlane>> agent =
        agent::DataPlane::Start(agent_pool->get(), &agent_directory, agent_options);
    REQUIRE(agent.ok());
    {
      absl::MutexLock lock(&map.mu);
      map.peers["client-1"] = PeerInfo{"client-1", (*client)->ucx_address(), (*client)->pool_rkey(),
                                       (*client)->pool_address(), (*client)->pool_bytes()};
      map.peers["n1"] = PeerInfo{"n1", (*agent)->ucx_address(), (*agent)->pool_rkey(),
                                 (*agent)->pool_address(), (*agent_pool)->capacity_bytes()};
    }

    // Arguments: written by the client, pulled by the agent.
    const std::string args = Pattern(3 * kMiB, 7);
    const BlockRef arg_ref = Write(*(*client)->pool(), args);
    absl::StatusOr<BlockRef> pulled = (*agent)->Pull("client-1", arg_ref, args.size(), getpid());
    INFO(pulled.status().ToString());
    REQUIRE(pulled.ok());
    CHECK(Read(**agent_pool, *pulled, args.size()) == args);

    // A result: pushed by the agent into the client's pool, owned by the client.
    const std::string result = Pattern(2 * kMiB, 9);
    const BlockRef local = Write(**agent_pool, result);
    const pid_t client_pid = getpid() + 1;  // any pid: the owner the client asked for
    absl::StatusOr<BlockRef> pushed = (*agent)->Push("client-1", local, result.size(), client_pid);
    INFO(pushed.status().ToString());
    REQUIRE(pushed.ok());
    CHECK(Read(*(*client)->pool(), *pushed, result.size()) == result);
    absl::StatusOr<bool> freed = (*client)->pool()->FreeIfOwner(*pushed, client_pid);
    CHECK((freed.ok() && *freed));
    REQUIRE((*client)->pool()->Free(arg_ref).ok());
    REQUIRE((*agent_pool)->Free(*pulled).ok());
    REQUIRE((*agent_pool)->Free(local).ok());

    agent->reset();
    client->reset();
    agent_pool->reset();
  }
  CHECK(dir.Files() == 0);
  CHECK(Threads() <= threads_before + 1);  // UCX may keep one async thread per process
}

TEST_CASE("a stopped client is Unavailable to the agent, naming it") {
  setenv("UCX_TLS", "tcp,self", 1);
  ShmDir dir;
  PeerMap map;
  ClientDataPlaneOptions options;
  options.peer_id = "client-2";
  options.pool_bytes = 16 * kMiB;
  options.pool_dir = dir.path;
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> client =
      ClientDataPlane::Start(options, std::make_unique<MapDirectory>(&map));
  REQUIRE(client.ok());
  common::ShmPoolOptions agent_pool_options;
  agent_pool_options.dir = dir.path;
  agent_pool_options.name = "agent-pool";
  agent_pool_options.size_bytes = 16 * kMiB;
  absl::StatusOr<std::unique_ptr<ShmPool>> agent_pool = ShmPool::Create(agent_pool_options);
  REQUIRE(agent_pool.ok());
  MapDirectory agent_directory(&map);
  agent::DataPlaneOptions agent_options;
  agent_options.node_id = "n1";
  absl::StatusOr<std::unique_ptr<agent::DataPlane>> agent =
      agent::DataPlane::Start(agent_pool->get(), &agent_directory, agent_options);
  REQUIRE(agent.ok());
  {
    absl::MutexLock lock(&map.mu);
    map.peers["client-2"] = PeerInfo{"client-2", (*client)->ucx_address(), (*client)->pool_rkey(),
                                     (*client)->pool_address(), (*client)->pool_bytes()};
    // The client sends its blocks to the agent that pulls them: it must find it.
    map.peers["n1"] = PeerInfo{"n1", (*agent)->ucx_address(), (*agent)->pool_rkey(),
                               (*agent)->pool_address(), 16 * kMiB};
  }
  const BlockRef ref = Write(*(*client)->pool(), Pattern(kMiB, 3));
  REQUIRE((*agent)->Pull("client-2", ref, kMiB, getpid()).ok());  // connected
  REQUIRE((*agent_pool)->ReclaimOwner(getpid()).ok());
  client->reset();
  absl::StatusOr<BlockRef> after = (*agent)->Pull("client-2", ref, kMiB, getpid(), absl::Seconds(5));
  REQUIRE_FALSE(after.ok());
  CHECK(absl::StrContains(after.status().message(), "client-2"));
  absl::StatusOr<common::ShmPoolStats> stats = (*agent_pool)->Stats();
  REQUIRE(stats.ok());
  CHECK(stats->blocks_in_use == 0);  // a failed pull leaves nothing allocated
  agent->reset();
  agent_pool->reset();
  CHECK(dir.Files() == 0);
}

TEST_CASE("a client data plane without a pool size is refused, naming the option") {
  PeerMap map;
  ClientDataPlaneOptions options;
  options.peer_id = "client-3";
  options.pool_bytes = 0;
  options.pool_option = "DragonExecutor(client_pool_mb=...)";
  absl::StatusOr<std::unique_ptr<ClientDataPlane>> client =
      ClientDataPlane::Start(options, std::make_unique<MapDirectory>(&map));
  CHECK(absl::IsInvalidArgument(client.status()));
  CHECK(absl::StrContains(client.status().message(), "client_pool_mb"));
}

}  // namespace
}  // namespace dragon::client
