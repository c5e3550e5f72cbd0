#include "agent/dict_store.h"

#include <unistd.h>

#include <algorithm>
#include <optional>
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
    : pool_(pool), alloc_wait_(alloc_wait), slabs_(pool) {}

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
  if (value.slot.slab != nullptr) {
    slabs_.Release(value.slot);
  } else if (absl::Status s = pool_->Free(value.block); !s.ok()) {
    spdlog::warn("Dictionary: freeing a value's block failed: {}", s.ToString());
  }
  value_bytes_ -= value.size;
}

void DictStore::StoreLocked(const std::string& dict_id, const std::string& key,
                            const Value& value) {
  Shard& shard = shards_[dict_id];
  auto [it, inserted] = shard.try_emplace(key, value);
  if (!inserted) {
    FreeLocked(it->second);
    it->second = value;
  }
  value_bytes_ += value.size;
}

absl::Status DictStore::PutSmall(const std::string& dict_id, const std::string& key,
                                 const std::string& data) {
  auto store = [&](const DictSlabs::Slot& slot) {  // under mu_
    if (!data.empty()) std::memcpy(slabs_.Data(slot), data.data(), data.size());
    Value value;
    value.slot = slot;
    value.size = data.size();
    StoreLocked(dict_id, key, value);
  };
  {
    absl::MutexLock lock(&mu_);
    if (std::optional<DictSlabs::Slot> slot = slabs_.Take(data.size())) {
      store(*slot);
      return absl::OkStatus();
    }
  }
  // Every slab of the class is full: a new one, taken without the lock.
  absl::StatusOr<common::BlockRef> block = pool_->Allocate(DictSlabs::kSlabBytes, alloc_wait_);
  if (!block.ok()) return block.status();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = slabs_.AddSlab(data.size(), *block); !s.ok()) return s;
  std::optional<DictSlabs::Slot> slot = slabs_.Take(data.size());  // the new slab's, at least
  store(*slot);
  return absl::OkStatus();
}

absl::Status DictStore::Put(const std::string& dict_id, const std::string& key,
                            const std::string& data) {
  if (DictSlabs::IsSmall(data.size())) return PutSmall(dict_id, key, data);
  absl::StatusOr<common::BlockRef> block = pool_->Allocate(data.size(), alloc_wait_);
  if (!block.ok()) return block.status();
  absl::StatusOr<absl::Span<char>> bytes = pool_->Resolve(*block);
  if (!bytes.ok()) {
    (void)pool_->Free(*block);
    return bytes.status();
  }
  std::memcpy(bytes->data(), data.data(), data.size());
  Value value;
  value.block = *block;
  value.size = data.size();
  absl::MutexLock lock(&mu_);
  StoreLocked(dict_id, key, value);
  return absl::OkStatus();
}

absl::Status DictStore::PutBlock(const std::string& dict_id, const std::string& key,
                                 const std::string& ref, uint64_t size, pid_t writer) {
  absl::StatusOr<common::BlockRef> block = common::BlockRef::Decode(ref);
  if (!block.ok()) return absl::InvalidArgumentError(absl::StrCat("bad value_refs: ", block.status().message()));
  absl::StatusOr<absl::Span<char>> bytes = pool_->Resolve(*block);
  if (!bytes.ok()) return bytes.status();
  if (size > bytes->size()) {
    return absl::InvalidArgumentError(absl::StrCat("value_sizes ", size, " is more than its block's ",
                                                   bytes->size(), " bytes"));
  }
  // Only from the owner the writer says it is: a block the writer does not
  // own (freed, reclaimed after its death, someone else's) is refused.
  if (absl::Status s = pool_->TransferOwner(*block, writer, getpid()); !s.ok()) return s;
  Value value;
  value.block = *block;
  value.size = size;
  absl::MutexLock lock(&mu_);
  StoreLocked(dict_id, key, value);
  return absl::OkStatus();
}

absl::Status DictStore::AddValueLocked(const Value& value, pid_t reader, v1::DictReply* reply) {
  if (reader > 0 && value.slot.slab == nullptr && value.size >= kBlockValueMin) {
    // No waiting for room under the lock: a full pool answers inline.
    absl::StatusOr<common::BlockRef> block =
        pool_->Allocate(value.size, absl::ZeroDuration(), reader);
    if (block.ok()) {
      absl::StatusOr<absl::Span<char>> to = pool_->Resolve(*block);
      absl::StatusOr<absl::Span<char>> from = pool_->Resolve(value.block);
      if (to.ok() && from.ok()) {
        std::memcpy(to->data(), from->data(), value.size);
        reply->add_values();
        reply->add_value_refs(block->Encode());
        reply->add_value_sizes(value.size);
        return absl::OkStatus();
      }
      (void)pool_->Free(*block);
      if (!from.ok()) return from.status();
    }
  }
  absl::StatusOr<std::string> bytes = ReadLocked(value);
  if (!bytes.ok()) return bytes.status();
  *reply->add_values() = *std::move(bytes);
  if (reader > 0) {
    reply->add_value_refs();
    reply->add_value_sizes(0);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> DictStore::ReadLocked(const Value& value) {
  if (value.slot.slab != nullptr) return std::string(slabs_.Data(value.slot), value.size);
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
      const bool blocks = request.value_refs_size() > 0;
      if (blocks && (request.value_refs_size() != request.keys_size() ||
                     request.value_sizes_size() != request.keys_size() ||
                     request.writer_pid() <= 0)) {
        return Invalid(request, absl::StrCat(request.keys_size(), " keys, ",
                                             request.value_refs_size(), " value_refs, ",
                                             request.value_sizes_size(),
                                             " value_sizes and writer_pid ",
                                             request.writer_pid()));
      }
      for (int i = 0; i < request.keys_size(); ++i) {
        absl::Status s =
            blocks && !request.value_refs(i).empty()
                ? PutBlock(request.dict_id(), request.keys(i), request.value_refs(i),
                           request.value_sizes(i), request.writer_pid())
                : Put(request.dict_id(), request.keys(i), request.values(i));
        if (!s.ok()) {
          return absl::Status(s.code(), absl::StrCat("Dictionary ", request.dict_id(), ": ", i,
                                                     " of ", request.keys_size(),
                                                     " items stored, then: ", s.message()));
        }
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
        if (value == nullptr || request.found_only()) continue;
        if (absl::Status s = AddValueLocked(*value, request.reader_pid(), &reply); !s.ok()) {
          for (const std::string& ref : reply.value_refs()) {  // the reader never sees them
            if (ref.empty()) continue;
            if (absl::StatusOr<common::BlockRef> block = common::BlockRef::Decode(ref); block.ok()) {
              (void)pool_->Free(*block);
            }
          }
          return s;
        }
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
