#include "agent/dict_store.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dragon::agent {
namespace {

absl::Status Invalid(const v1::DictRequest& request, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("Dictionary ", request.dict_id(), " ",
                   v1::DictRequest::Op_Name(request.op()), ": ", why));
}

}  // namespace

DictStore::DictStore(common::ShmPool* pool, absl::Duration alloc_wait)
    : pool_(pool), alloc_wait_(alloc_wait) {}

DictStore::~DictStore() {
  absl::MutexLock lock(&mu_);
  for (auto& [id, shard] : shards_) {
    for (auto& [key, value] : shard) FreeLocked(value);
  }
  shards_.clear();
}

size_t DictStore::shards() const {
  absl::MutexLock lock(&mu_);
  return shards_.size();
}

uint64_t DictStore::value_bytes() const {
  absl::MutexLock lock(&mu_);
  return value_bytes_;
}

void DictStore::FreeLocked(const Value& value) {
  if (absl::Status s = pool_->Free(value.block); !s.ok()) {
    spdlog::warn("Dictionary: freeing a value's block failed: {}", s.ToString());
  }
  value_bytes_ -= value.size;
}

absl::StatusOr<std::string> DictStore::ReadLocked(const Value& value) {
  absl::StatusOr<absl::Span<char>> bytes = pool_->Resolve(value.block);
  if (!bytes.ok()) return bytes.status();
  return std::string(bytes->data(), value.size);
}

absl::StatusOr<v1::DictReply> DictStore::Apply(const v1::DictRequest& request) {
  if (request.dict_id().empty()) return Invalid(request, "no dict_id");
  v1::DictReply reply;
  switch (request.op()) {
    case v1::DictRequest::PUT: {
      if (request.keys_size() != request.values_size()) {
        return Invalid(request, absl::StrCat(request.keys_size(), " keys and ",
                                             request.values_size(), " values"));
      }
      // Each value is written into a new block outside the lock (a full pool
      // may make Allocate wait), then swapped in under it.
      for (int i = 0; i < request.keys_size(); ++i) {
        const std::string& data = request.values(i);
        absl::StatusOr<common::BlockRef> block = pool_->Allocate(std::max<size_t>(data.size(), 1),
                                                                 alloc_wait_);
        if (!block.ok()) {
          return absl::Status(block.status().code(),
                              absl::StrCat("Dictionary ", request.dict_id(), ": ", i, " of ",
                                           request.keys_size(), " items stored, then: ",
                                           block.status().message()));
        }
        absl::StatusOr<absl::Span<char>> bytes = pool_->Resolve(*block);
        if (!bytes.ok()) {
          (void)pool_->Free(*block);
          return bytes.status();
        }
        if (!data.empty()) std::memcpy(bytes->data(), data.data(), data.size());
        absl::MutexLock lock(&mu_);
        Shard& shard = shards_[request.dict_id()];
        auto [it, inserted] = shard.try_emplace(request.keys(i), Value{*block, data.size()});
        if (!inserted) {
          FreeLocked(it->second);
          it->second = Value{*block, data.size()};
        }
        value_bytes_ += data.size();
      }
      absl::MutexLock lock(&mu_);
      auto it = shards_.find(request.dict_id());
      reply.set_count(it == shards_.end() ? 0 : it->second.size());
      return reply;
    }
    case v1::DictRequest::GET:
    case v1::DictRequest::GET_MANY: {
      if (request.op() == v1::DictRequest::GET && request.keys_size() != 1) {
        return Invalid(request, absl::StrCat("wants 1 key, got ", request.keys_size()));
      }
      absl::MutexLock lock(&mu_);
      auto shard = shards_.find(request.dict_id());
      for (const std::string& key : request.keys()) {
        const Value* value = nullptr;
        if (shard != shards_.end()) {
          auto it = shard->second.find(key);
          if (it != shard->second.end()) value = &it->second;
        }
        reply.add_found(value != nullptr);
        if (value == nullptr) continue;
        absl::StatusOr<std::string> bytes = ReadLocked(*value);
        if (!bytes.ok()) return bytes.status();
        *reply.add_values() = *std::move(bytes);
      }
      return reply;
    }
    case v1::DictRequest::DELETE: {
      if (request.keys_size() != 1) {
        return Invalid(request, absl::StrCat("wants 1 key, got ", request.keys_size()));
      }
      absl::MutexLock lock(&mu_);
      auto shard = shards_.find(request.dict_id());
      bool found = false;
      if (shard != shards_.end()) {
        auto it = shard->second.find(request.keys(0));
        if (it != shard->second.end()) {
          FreeLocked(it->second);
          shard->second.erase(it);
          found = true;
        }
      }
      reply.add_found(found);
      return reply;
    }
    case v1::DictRequest::KEYS: {
      absl::MutexLock lock(&mu_);
      auto shard = shards_.find(request.dict_id());
      if (shard != shards_.end()) {
        for (const auto& [key, value] : shard->second) *reply.add_keys() = key;
      }
      reply.set_count(reply.keys_size());
      return reply;
    }
    case v1::DictRequest::LENGTH: {
      absl::MutexLock lock(&mu_);
      auto shard = shards_.find(request.dict_id());
      reply.set_count(shard == shards_.end() ? 0 : shard->second.size());
      return reply;
    }
    case v1::DictRequest::DESTROY: {
      absl::MutexLock lock(&mu_);
      auto shard = shards_.find(request.dict_id());
      if (shard != shards_.end()) {
        reply.set_count(shard->second.size());
        for (auto& [key, value] : shard->second) FreeLocked(value);
        shards_.erase(shard);
      }
      return reply;
    }
    default:
      return Invalid(request, "unknown op");
  }
}

}  // namespace dragon::agent
