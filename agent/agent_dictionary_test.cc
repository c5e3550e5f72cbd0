// AgentDictionary on two agents' data planes (loopback TCP): operations on
// this node's shard applied here, on the other's forwarded and applied
// there, NODES from the directory, a lost node named.
#include "agent/agent_dictionary.h"

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/data_plane.h"
#include "agent/data_plane_test_util.h"

namespace dragon::agent::data_plane_test {
namespace {

v1::DictRequest Request(const std::string& node, v1::DictRequest::Op op) {
  v1::DictRequest r;
  r.set_node_id(node);
  r.set_dict_id("d");
  r.set_op(op);
  r.set_timeout_ms(10000);
  return r;
}

struct TwoDictionaryNodes {
  TwoDictionaryNodes() {
    UseTcpOnLoopback();
    auto list = [] { return absl::StatusOr<std::vector<std::string>>({"h1", "h2"}); };
    dict_a = std::make_unique<AgentDictionary>("h1", pool_a.get(), list);
    dict_b = std::make_unique<AgentDictionary>("h2", pool_b.get(), list);
    DataPlaneOptions oa = Options("h1"), ob = Options("h2");
    oa.call_handler = dict_a->Handler();
    ob.call_handler = dict_b->Handler();
    a = *DataPlane::Start(pool_a.get(), &directory, oa);
    b = *DataPlane::Start(pool_b.get(), &directory, ob);
    directory.Publish("h1", *a);
    directory.Publish("h2", *b);
    dict_a->SetPlane(a.get());
    dict_b->SetPlane(b.get());
  }
  ~TwoDictionaryNodes() {
    a.reset();
    b.reset();
    dict_a.reset();
    dict_b.reset();
    CHECK(BlocksInUse(*pool_a) == 0);
    CHECK(BlocksInUse(*pool_b) == 0);
    pool_a.reset();
    pool_b.reset();
    CHECK(dir.Files() == 0);
  }
  ShmDir dir;
  std::unique_ptr<ShmPool> pool_a = MakePool(dir, "pool-a");
  std::unique_ptr<ShmPool> pool_b = MakePool(dir, "pool-b");
  FakeDirectory directory;
  std::unique_ptr<AgentDictionary> dict_a, dict_b;
  std::unique_ptr<DataPlane> a, b;
};

TEST_CASE("a put for the other node's shard lands in its pool; get, delete and keys through either") {
  TwoDictionaryNodes nodes;
  v1::DictRequest put = Request("h2", v1::DictRequest::PUT);
  put.add_keys("k");
  put.add_values(std::string(3 << 20, 'v'));
  absl::StatusOr<v1::DictReply> stored = nodes.dict_a->Route(put);
  INFO(stored.status().ToString());
  REQUIRE(stored.ok());
  CHECK(stored->count() == 1);
  CHECK(BlocksInUse(*nodes.pool_b) == 1);  // the value is in h2's pool
  CHECK(BlocksInUse(*nodes.pool_a) == 0);

  v1::DictRequest get = Request("h2", v1::DictRequest::GET);
  get.add_keys("k");
  absl::StatusOr<v1::DictReply> from_a = nodes.dict_a->Route(get);  // forwarded
  absl::StatusOr<v1::DictReply> from_b = nodes.dict_b->Route(get);  // local
  REQUIRE(from_a.ok());
  REQUIRE(from_b.ok());
  CHECK(from_a->values(0) == std::string(3 << 20, 'v'));
  CHECK(from_b->values(0) == from_a->values(0));

  CHECK(nodes.dict_a->Route(Request("h2", v1::DictRequest::KEYS))->keys_size() == 1);
  CHECK(nodes.dict_a->Route(Request("h1", v1::DictRequest::LENGTH))->count() == 0);
  v1::DictRequest del = Request("h2", v1::DictRequest::DELETE);
  del.add_keys("k");
  CHECK(nodes.dict_a->Route(del)->found(0));
  CHECK(BlocksInUse(*nodes.pool_b) == 0);
}

TEST_CASE("blocks go only to the shard of the node whose pool holds them") {
  TwoDictionaryNodes nodes;
  v1::DictRequest put = Request("h2", v1::DictRequest::PUT);
  put.add_keys("k");
  put.add_values("");
  put.add_value_refs(std::string(24, 'x'));
  put.add_value_sizes(1);
  put.set_writer_pid(getpid());
  absl::StatusOr<v1::DictReply> refused = nodes.dict_a->Route(put);
  CHECK(absl::StrContains(refused.status().message(), "cannot take them"));
  // A reader_pid for another node's shard is dropped: the value comes inline.
  v1::DictRequest inline_put = Request("h2", v1::DictRequest::PUT);
  inline_put.add_keys("k");
  inline_put.add_values(std::string(1 << 20, 'v'));
  REQUIRE(nodes.dict_a->Route(inline_put).ok());
  v1::DictRequest get = Request("h2", v1::DictRequest::GET);
  get.add_keys("k");
  get.set_reader_pid(getpid());
  absl::StatusOr<v1::DictReply> got = nodes.dict_a->Route(get);
  REQUIRE(got.ok());
  CHECK(got->value_refs_size() == 0);
  CHECK(got->values(0).size() == 1 << 20);
}

TEST_CASE("NODES lists the directory's nodes; bad requests are refused naming why") {
  TwoDictionaryNodes nodes;
  absl::StatusOr<v1::DictReply> listed = nodes.dict_a->Route(Request("", v1::DictRequest::NODES));
  REQUIRE(listed.ok());
  CHECK(listed->keys_size() == 2);
  CHECK(absl::StrContains(nodes.dict_a->Route(Request("", v1::DictRequest::LENGTH)).status().message(),
                          "node_id is empty"));
  absl::StatusOr<v1::DictReply> unknown = nodes.dict_a->Route(Request("h9", v1::DictRequest::LENGTH));
  CHECK(absl::IsNotFound(unknown.status()));
  // An error of the shard's store comes back with its code, naming the node.
  v1::DictRequest unpaired = Request("h2", v1::DictRequest::PUT);
  unpaired.add_keys("a");
  absl::StatusOr<v1::DictReply> refused = nodes.dict_a->Route(unpaired);
  CHECK(absl::IsInvalidArgument(refused.status()));
  CHECK(absl::StrContains(refused.status().message(), "node h2"));
  CHECK(absl::StrContains(refused.status().message(), "1 keys and 0 values"));
}

TEST_CASE("a node whose agent is gone: its shard's operations fail Unavailable naming it") {
  TwoDictionaryNodes nodes;
  v1::DictRequest put = Request("h2", v1::DictRequest::PUT);
  put.add_keys("k");
  put.add_values("v");
  REQUIRE(nodes.dict_a->Route(put).ok());
  nodes.b.reset();  // h2's data plane closes: its connections go
  nodes.dict_b.reset();
  v1::DictRequest get = Request("h2", v1::DictRequest::GET);
  get.add_keys("k");
  absl::StatusOr<v1::DictReply> lost = nodes.dict_a->Route(get);
  INFO(lost.status().ToString());
  CHECK_FALSE(lost.ok());
  CHECK(absl::StrContains(lost.status().message(), "h2"));
  // h1's own shard still works.
  CHECK(nodes.dict_a->Route(Request("h1", v1::DictRequest::LENGTH)).ok());
}

TEST_CASE("calls carry the Dictionary's service byte: one without it is refused naming the sender") {
  TwoDictionaryNodes nodes;
  v1::DictRequest length = Request("h2", v1::DictRequest::LENGTH);
  absl::StatusOr<std::string> bare = nodes.a->Call("h2", length.SerializeAsString(), absl::Seconds(10));
  CHECK(absl::IsInvalidArgument(bare.status()));
  CHECK(absl::StrContains(bare.status().message(), "node h1"));
  std::string prefixed(1, AgentDictionary::kCallService);
  length.AppendToString(&prefixed);
  absl::StatusOr<std::string> answered = nodes.a->Call("h2", prefixed, absl::Seconds(10));
  REQUIRE(answered.ok());
  v1::DictReply reply;
  CHECK(reply.ParseFromString(*answered));
}

}  // namespace
}  // namespace dragon::agent::data_plane_test
