#include "agent/peer_directory.h"

#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace dragon::agent {
namespace {

v1::NodeInfo Node(const std::string& id, const std::string& address, const std::string& state = "ready") {
  v1::NodeInfo node;
  node.set_node_id(id);
  node.set_state(state);
  node.set_ucx_address(address);
  if (!address.empty()) {
    node.set_shm_pool_rkey("rkey-" + id);
    node.set_shm_pool_address(0x1000);
  }
  return node;
}

// A head whose node list the test sets; counts the calls.
struct FakeHead {
  ListNodesFn Fn() {
    return [this]() -> absl::StatusOr<v1::ListNodesReply> {
      absl::MutexLock lock(&mu);
      ++calls;
      if (!error.ok()) return error;
      return reply;
    };
  }
  void Set(std::vector<v1::NodeInfo> nodes) {
    absl::MutexLock lock(&mu);
    reply.clear_nodes();
    for (auto& n : nodes) *reply.add_nodes() = n;
  }
  absl::Mutex mu;
  v1::ListNodesReply reply;
  absl::Status error;
  int calls = 0;
};

TEST_CASE("Lookup asks the head once and answers later lookups from its cache") {
  FakeHead head;
  head.Set({Node("n1", "addr1"), Node("n2", "addr2")});
  HeadPeerDirectory dir("head:1", head.Fn());
  absl::StatusOr<PeerInfo> n1 = dir.Lookup("n1", false);
  REQUIRE(n1.ok());
  CHECK(n1->node_id == "n1");
  CHECK(n1->ucx_address == "addr1");
  CHECK(n1->pool_rkey == "rkey-n1");
  CHECK(n1->pool_address == 0x1000);
  REQUIRE(dir.Lookup("n2", false).ok());  // the same answer listed n2
  REQUIRE(dir.Lookup("n1", false).ok());
  CHECK(dir.list_calls() == 1);
}

TEST_CASE("refresh asks the head again and sees a restarted agent's new address") {
  FakeHead head;
  head.Set({Node("n1", "old")});
  HeadPeerDirectory dir("head:1", head.Fn());
  REQUIRE(dir.Lookup("n1", false)->ucx_address == "old");
  head.Set({Node("n1", "new")});
  CHECK(dir.Lookup("n1", false)->ucx_address == "old");  // cached
  CHECK(dir.Lookup("n1", true)->ucx_address == "new");
  CHECK(dir.list_calls() == 2);
}

TEST_CASE("a node missing from the cache is asked for again (it may have joined since)") {
  FakeHead head;
  head.Set({Node("n1", "a1")});
  HeadPeerDirectory dir("head:1", head.Fn());
  absl::StatusOr<PeerInfo> n2 = dir.Lookup("n2", false);
  REQUIRE(n2.status().code() == absl::StatusCode::kNotFound);
  CHECK(absl::StrContains(n2.status().message(), "node n2"));
  CHECK(absl::StrContains(n2.status().message(), "head:1"));
  head.Set({Node("n1", "a1"), Node("n2", "a2")});
  CHECK(dir.Lookup("n2", false)->ucx_address == "a2");
  CHECK(dir.list_calls() == 2);
}

TEST_CASE("a node without a data plane, or lost, is NotFound naming it") {
  FakeHead head;
  head.Set({Node("plain", ""), Node("dead", "a", "lost")});
  HeadPeerDirectory dir("head:1", head.Fn());
  absl::StatusOr<PeerInfo> plain = dir.Lookup("plain", false);
  REQUIRE(plain.status().code() == absl::StatusCode::kNotFound);
  CHECK(plain.status().message() ==
        "node plain has no data plane (its agent runs without a pool or with --noucx)");
  absl::StatusOr<PeerInfo> dead = dir.Lookup("dead", false);
  REQUIRE(dead.status().code() == absl::StatusCode::kNotFound);
  CHECK(absl::StrContains(dead.status().message(), "node dead is lost"));
  CHECK(dir.list_calls() == 1);  // both answers are cached
}

TEST_CASE("a failed ListNodes is Unavailable naming the head; the next lookup asks again") {
  FakeHead head;
  head.error = absl::UnavailableError("connection refused");
  HeadPeerDirectory dir("head:7", head.Fn());
  absl::StatusOr<PeerInfo> got = dir.Lookup("n1", false);
  REQUIRE(got.status().code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(got.status().message(), "dragond at head:7"));
  CHECK(absl::StrContains(got.status().message(), "node n1"));
  CHECK(absl::StrContains(got.status().message(), "connection refused"));
  {
    absl::MutexLock lock(&head.mu);
    head.error = absl::OkStatus();
  }
  head.Set({Node("n1", "a1")});
  CHECK(dir.Lookup("n1", false).ok());
  CHECK(dir.list_calls() == 2);
}

TEST_CASE("lookups during a ListNodes in flight share its answer") {
  FakeHead head;
  head.Set({Node("n1", "a1"), Node("n2", "a2")});
  absl::Notification entered, release;
  ListNodesFn inner = head.Fn();
  HeadPeerDirectory dir("head:1", [&]() {
    entered.Notify();
    release.WaitForNotification();
    return inner();
  });
  std::thread first([&] { CHECK(dir.Lookup("n1", true).ok()); });
  entered.WaitForNotification();
  std::vector<std::thread> others;
  for (int i = 0; i < 4; ++i) {
    others.emplace_back([&, i] { CHECK(dir.Lookup(i % 2 ? "n1" : "n2", true).ok()); });
  }
  // Until all four wait on the call in flight (a condition, not a pause).
  while (dir.waiting_lookups() < 4) std::this_thread::yield();
  release.Notify();
  first.join();
  for (auto& t : others) t.join();
  CHECK(dir.list_calls() == 1);
}

TEST_CASE("lookups sharing a failed ListNodes each get Unavailable naming their node") {
  FakeHead head;
  head.error = absl::UnavailableError("head gone");
  absl::Notification entered, release;
  ListNodesFn inner = head.Fn();
  HeadPeerDirectory dir("head:1", [&]() {
    entered.Notify();
    release.WaitForNotification();
    return inner();
  });
  absl::Status first_status, second_status;
  std::thread first([&] { first_status = dir.Lookup("n1", false).status(); });
  entered.WaitForNotification();
  std::thread second([&] { second_status = dir.Lookup("n2", false).status(); });
  while (dir.waiting_lookups() < 1) std::this_thread::yield();
  release.Notify();
  first.join();
  second.join();
  CHECK(first_status.code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(first_status.message(), "node n1"));
  CHECK(second_status.code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(second_status.message(), "node n2"));
  CHECK(dir.list_calls() == 1);
}

TEST_CASE("NodesWithDataPlane asks the head afresh and lists the nodes that have one, sorted") {
  FakeHead head;
  head.Set({Node("n2", "addr2"), Node("n1", "addr1"), Node("n3", ""), Node("n4", "addr4", "lost")});
  HeadPeerDirectory dir("head:1", head.Fn());
  absl::StatusOr<std::vector<std::string>> nodes = dir.NodesWithDataPlane();
  REQUIRE(nodes.ok());
  CHECK(*nodes == std::vector<std::string>{"n1", "n2"});
  head.Set({Node("n1", "addr1"), Node("n5", "addr5")});
  CHECK(*dir.NodesWithDataPlane() == std::vector<std::string>{"n1", "n5"});
  CHECK(dir.list_calls() == 2);
  {
    absl::MutexLock lock(&head.mu);
    head.error = absl::UnavailableError("connection refused");
  }
  absl::StatusOr<std::vector<std::string>> failed = dir.NodesWithDataPlane();
  CHECK(failed.status().code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(failed.status().message(), "dragond at head:1"));
}

v1::DataPeer ClientPeer(const std::string& id, const std::string& address) {
  v1::DataPeer peer;
  peer.set_peer_id(id);
  peer.set_ucx_address(address);
  peer.set_shm_pool_rkey("rkey-" + id);
  peer.set_shm_pool_address(0x2000);
  peer.set_shm_pool_bytes(1 << 20);
  return peer;
}

TEST_CASE("a client's data peer resolves like a node but holds no Dictionary shards") {
  FakeHead head;
  head.Set({Node("n1", "addr1")});
  {
    absl::MutexLock lock(&head.mu);
    *head.reply.add_data_peers() = ClientPeer("client-7", "client-addr");
  }
  HeadPeerDirectory dir("head:1", head.Fn());
  absl::StatusOr<PeerInfo> client = dir.Lookup("client-7", false);
  REQUIRE(client.ok());
  CHECK(client->node_id == "client-7");
  CHECK(client->ucx_address == "client-addr");
  CHECK(client->pool_rkey == "rkey-client-7");
  CHECK(client->pool_address == 0x2000);
  CHECK(client->pool_bytes == (1u << 20));
  CHECK(*dir.NodesWithDataPlane() == std::vector<std::string>{"n1"});

  // Its session closed: the head lists it no more, and a refresh says so.
  {
    absl::MutexLock lock(&head.mu);
    head.reply.clear_data_peers();
  }
  absl::StatusOr<PeerInfo> gone = dir.Lookup("client-7", true);
  CHECK(gone.status().code() == absl::StatusCode::kNotFound);
  CHECK(absl::StrContains(gone.status().message(), "client-7"));
  CHECK(absl::StrContains(gone.status().message(), "session closes"));
}

}  // namespace
}  // namespace dragon::agent
