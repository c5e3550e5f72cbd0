#include "agent/dict_store.h"

#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/shm_pool.h"

namespace dragon::agent {
namespace {

// A pool in a private directory under /dev/shm, removed with it.
struct TestPool {
  explicit TestPool(uint64_t bytes) {
    char name[] = "/dev/shm/dragon-dict-store-test-XXXXXX";
    REQUIRE(mkdtemp(name) != nullptr);
    dir = name;
    common::ShmPoolOptions options;
    options.dir = dir;
    options.name = "pool";
    options.size_bytes = bytes;
    options.reserve = false;
    auto created = common::ShmPool::Create(options);
    REQUIRE(created.ok());
    pool = *std::move(created);
  }
  ~TestPool() {
    pool.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  uint64_t Blocks() { return pool->Stats()->blocks_in_use; }
  std::string dir;
  std::unique_ptr<common::ShmPool> pool;
};

v1::DictRequest Request(v1::DictRequest::Op op, const std::string& dict = "d1") {
  v1::DictRequest r;
  r.set_dict_id(dict);
  r.set_op(op);
  return r;
}

v1::DictReply Must(DictStore& store, const v1::DictRequest& request) {
  absl::StatusOr<v1::DictReply> reply = store.Apply(request);
  INFO(reply.status().ToString());
  REQUIRE(reply.ok());
  return *reply;
}

// Sizes 0, 100, ..., 9,900: values 0..20 (up to 2,000 bytes) are small and
// go to slabs of six size classes (32: the empty one; 128; 256; 512: 300 to
// 500; 1024: 600 to 1,000; 2048: 1,100 to 2,000), values 21..99 take a
// block each.
constexpr int kLargeOfHundred = 79;
constexpr int kSlabsOfHundred = 6;

TEST_CASE("put, get, replace, delete, keys, length and destroy; values live in the pool") {
  TestPool tp(64 << 20);
  DictStore store(tp.pool.get());
  v1::DictRequest put = Request(v1::DictRequest::PUT);
  for (int i = 0; i < 100; ++i) {
    put.add_keys(absl::StrCat("k", i));
    put.add_values(std::string(i * 100, static_cast<char>('a' + i % 26)));
  }
  CHECK(Must(store, put).count() == 100);
  CHECK(tp.Blocks() == kLargeOfHundred + kSlabsOfHundred);
  CHECK(store.value_bytes() == 100 * 99 * 100 / 2);
  v1::DictRequest get_small = Request(v1::DictRequest::GET);
  get_small.add_keys("k7");
  CHECK(Must(store, get_small).values(0) == std::string(700, 'a' + 7));

  v1::DictRequest get = Request(v1::DictRequest::GET);
  get.add_keys("k42");
  v1::DictReply got = Must(store, get);
  REQUIRE(got.found(0));
  CHECK(got.values(0) == std::string(4200, 'a' + 42 % 26));

  v1::DictRequest replace = Request(v1::DictRequest::PUT);
  replace.add_keys("k42");
  replace.add_values("new");
  CHECK(Must(store, replace).count() == 100);
  CHECK(Must(store, get).values(0) == "new");
  // The old value's block was freed; "new" took a slot of the 32-byte slab.
  CHECK(tp.Blocks() == kLargeOfHundred - 1 + kSlabsOfHundred);

  v1::DictRequest many = Request(v1::DictRequest::GET_MANY);
  many.add_keys("k1");
  many.add_keys("missing");
  many.add_keys("k2");
  v1::DictReply both = Must(store, many);
  REQUIRE(both.found_size() == 3);
  CHECK(both.found(0));
  CHECK_FALSE(both.found(1));
  CHECK(both.values_size() == 2);
  CHECK(both.values(1) == std::string(200, 'c'));

  v1::DictRequest del = Request(v1::DictRequest::DELETE);
  del.add_keys("k42");
  CHECK(Must(store, del).found(0));
  CHECK_FALSE(Must(store, del).found(0));
  CHECK_FALSE(Must(store, get).found(0));
  CHECK(Must(store, Request(v1::DictRequest::LENGTH)).count() == 99);
  CHECK(Must(store, Request(v1::DictRequest::KEYS)).keys_size() == 99);

  // Another Dictionary's shard is separate.
  CHECK(Must(store, Request(v1::DictRequest::LENGTH, "d2")).count() == 0);
  CHECK(Must(store, Request(v1::DictRequest::DESTROY)).count() == 99);
  CHECK(tp.Blocks() == 0);
  CHECK(store.shards() == 0);
  CHECK(store.value_bytes() == 0);
}

TEST_CASE("a value larger than the smallest block takes one block of its size") {
  TestPool tp(64 << 20);
  DictStore store(tp.pool.get());
  v1::DictRequest put = Request(v1::DictRequest::PUT);
  put.add_keys("big");
  put.add_values(std::string(5 << 20, 'x'));
  Must(store, put);
  v1::DictRequest get = Request(v1::DictRequest::GET);
  get.add_keys("big");
  CHECK(Must(store, get).values(0).size() == (5u << 20));
  CHECK(tp.pool->Stats()->free_bytes == (64u << 20) - (8u << 20));
}

TEST_CASE("a full pool fails the put naming --shm-pool-mb and how many items were stored") {
  TestPool tp(1 << 20);
  DictStore store(tp.pool.get(), absl::ZeroDuration());
  v1::DictRequest put = Request(v1::DictRequest::PUT);
  for (int i = 0; i < 3; ++i) {
    put.add_keys(absl::StrCat("k", i));
    put.add_values(std::string(400 << 10, 'v'));
  }
  absl::StatusOr<v1::DictReply> reply = store.Apply(put);
  REQUIRE(reply.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(reply.status().message(), "2 of 3 items stored"));
  CHECK(absl::StrContains(reply.status().message(), common::kShmPoolSizeOption));
  CHECK(Must(store, Request(v1::DictRequest::LENGTH)).count() == 2);
}

TEST_CASE("many small values share slabs, and the slabs go back to the pool as they empty") {
  TestPool tp(64 << 20);
  DictStore store(tp.pool.get());
  constexpr int kItems = 10000;
  v1::DictRequest put = Request(v1::DictRequest::PUT);
  for (int i = 0; i < kItems; ++i) {
    put.add_keys(absl::StrCat("k", i));
    put.add_values(absl::StrCat("v", i));  // 2 to 5 bytes: 32-byte slots
  }
  CHECK(Must(store, put).count() == kItems);
  const uint64_t per_slab = DictSlabs::kSlabBytes / DictSlabs::kMinSlot;
  CHECK(tp.Blocks() == (kItems + per_slab - 1) / per_slab);  // 5 blocks, not 10,000
  v1::DictRequest many = Request(v1::DictRequest::GET_MANY);
  for (int i = 0; i < kItems; i += 997) many.add_keys(absl::StrCat("k", i));
  v1::DictReply got = Must(store, many);
  for (int j = 0, i = 0; i < kItems; i += 997, ++j) CHECK(got.values(j) == absl::StrCat("v", i));

  // A value that grows past the small bound moves to a block of its own and back.
  v1::DictRequest grow = Request(v1::DictRequest::PUT);
  grow.add_keys("k0");
  grow.add_values(std::string(DictSlabs::kMaxSmallValue + 1, 'g'));
  Must(store, grow);
  v1::DictRequest get = Request(v1::DictRequest::GET);
  get.add_keys("k0");
  CHECK(Must(store, get).values(0).size() == DictSlabs::kMaxSmallValue + 1);
  grow.set_values(0, std::string(DictSlabs::kMaxSmallValue, 's'));
  Must(store, grow);
  CHECK(Must(store, get).values(0) == std::string(DictSlabs::kMaxSmallValue, 's'));

  // Deleting every item empties and frees every slab.
  for (int i = 0; i < kItems; ++i) {
    v1::DictRequest del = Request(v1::DictRequest::DELETE);
    del.add_keys(absl::StrCat("k", i));
    REQUIRE(Must(store, del).found(0));
  }
  CHECK(tp.Blocks() == 0);
  CHECK(store.value_bytes() == 0);
}

TEST_CASE("small values in a full pool fail naming --shm-pool-mb and how many were stored") {
  TestPool tp(1 << 20);
  DictStore store(tp.pool.get(), absl::ZeroDuration());
  const uint64_t slabs = tp.pool->Stats()->free_bytes / DictSlabs::kSlabBytes;
  const uint64_t fit = slabs * (DictSlabs::kSlabBytes / 1024);  // 1 KiB slots
  v1::DictRequest put = Request(v1::DictRequest::PUT);
  for (uint64_t i = 0; i < fit + 10; ++i) {
    put.add_keys(absl::StrCat("k", i));
    put.add_values(std::string(1000, 'v'));
  }
  absl::StatusOr<v1::DictReply> reply = store.Apply(put);
  REQUIRE(reply.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(reply.status().message(), absl::StrCat(fit, " of ", fit + 10, " items stored")));
  CHECK(absl::StrContains(reply.status().message(), common::kShmPoolSizeOption));
  CHECK(Must(store, Request(v1::DictRequest::DESTROY)).count() == fit);
  CHECK(tp.Blocks() == 0);
}

TEST_CASE("bad requests are refused naming what is wrong") {
  TestPool tp(1 << 20);
  DictStore store(tp.pool.get());
  CHECK(absl::StrContains(store.Apply(Request(v1::DictRequest::PUT, "")).status().message(),
                          "no dict_id"));
  v1::DictRequest unpaired = Request(v1::DictRequest::PUT);
  unpaired.add_keys("a");
  CHECK(absl::StrContains(store.Apply(unpaired).status().message(), "1 keys and 0 values"));
  CHECK(absl::StrContains(store.Apply(Request(v1::DictRequest::GET)).status().message(),
                          "wants 1 key, got 0"));
  CHECK(store.Apply(Request(v1::DictRequest::OP_UNSPECIFIED)).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("large values by block: a put takes the writer's block over, a get hands the reader "
          "a copy in a block it owns") {
  TestPool tp(16 << 20);
  DictStore store(tp.pool.get());
  const pid_t writer = getpid() + 1000000;  // any pid: ownership is bookkeeping here
  const pid_t reader = getpid() + 2000000;
  const std::string big(DictStore::kBlockValueMin + 5, 'b');
  absl::StatusOr<common::BlockRef> block = tp.pool->Allocate(big.size() + 100, absl::ZeroDuration(), writer);
  REQUIRE(block.ok());
  std::memcpy(tp.pool->Resolve(*block)->data(), big.data(), big.size());
  v1::DictRequest put = Request(v1::DictRequest::PUT);
  put.add_keys("big");
  put.add_values("");
  put.add_value_refs(block->Encode());
  put.add_value_sizes(big.size());
  put.add_keys("small");
  put.add_values("s");
  put.add_value_refs("");
  put.add_value_sizes(0);
  put.set_writer_pid(writer);
  Must(store, put);
  CHECK(tp.pool->Owners()->size() == 1);  // the writer's block is the store's now
  CHECK((*tp.pool->Owners())[0] == getpid());

  v1::DictRequest get = Request(v1::DictRequest::GET_MANY);
  get.add_keys("big");
  get.add_keys("small");
  get.set_reader_pid(reader);
  v1::DictReply got = Must(store, get);
  REQUIRE(got.value_refs_size() == 2);
  CHECK(got.values(0).empty());
  CHECK(got.value_sizes(0) == big.size());
  absl::StatusOr<common::BlockRef> copy = common::BlockRef::Decode(got.value_refs(0));
  REQUIRE(copy.ok());
  CHECK(std::string(tp.pool->Resolve(*copy)->data(), big.size()) == big);
  CHECK(*tp.pool->FreeIfOwner(*copy, reader));  // the reader's to free
  CHECK(got.value_refs(1).empty());
  CHECK(got.values(1) == "s");  // small ones stay inline
  // A membership test answers found, without a value or a block.
  v1::DictRequest has = Request(v1::DictRequest::GET_MANY);
  has.add_keys("big");
  has.add_keys("absent");
  has.set_reader_pid(reader);
  has.set_found_only(true);
  v1::DictReply found = Must(store, has);
  CHECK(found.found_size() == 2);
  CHECK(found.found(0));
  CHECK_FALSE(found.found(1));
  CHECK(found.values_size() == 0);
  CHECK(found.value_refs_size() == 0);
  // Without reader_pid everything is inline, as before.
  get.clear_reader_pid();
  got = Must(store, get);
  CHECK(got.value_refs_size() == 0);
  CHECK(got.values(0) == big);
}

TEST_CASE("a block the writer does not own, or too small for its size, is refused") {
  TestPool tp(4 << 20);
  DictStore store(tp.pool.get());
  const pid_t writer = getpid() + 1000000;
  absl::StatusOr<common::BlockRef> block = tp.pool->Allocate(DictStore::kBlockValueMin, absl::ZeroDuration(), writer);
  REQUIRE(block.ok());
  v1::DictRequest put = Request(v1::DictRequest::PUT);
  put.add_keys("k");
  put.add_values("");
  put.add_value_refs(block->Encode());
  put.add_value_sizes(DictStore::kBlockValueMin + 1);
  put.set_writer_pid(writer);
  CHECK(absl::StrContains(store.Apply(put).status().message(), "is more than its block's"));
  put.set_value_sizes(0, 10);
  put.set_writer_pid(writer + 1);
  CHECK(!store.Apply(put).ok());  // not that pid's block
  CHECK((*tp.pool->Owners())[0] == writer);  // still the writer's
  put.clear_writer_pid();
  CHECK(absl::StrContains(store.Apply(put).status().message(), "writer_pid 0"));
  CHECK(store.shards() == 0);
}

TEST_CASE("the store frees every value when it goes") {
  TestPool tp(16 << 20);
  {
    DictStore store(tp.pool.get());
    v1::DictRequest put = Request(v1::DictRequest::PUT);
    put.add_keys("a");
    put.add_values("1");
    Must(store, put);
    CHECK(tp.Blocks() == 1);
  }
  CHECK(tp.Blocks() == 0);
}

}  // namespace
}  // namespace dragon::agent
