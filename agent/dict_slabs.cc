#include "agent/dict_slabs.h"

#include <utility>

#include "spdlog/spdlog.h"

namespace dragon::agent {

DictSlabs::~DictSlabs() {
  for (auto& [raw, slab] : slabs_) {
    if (absl::Status s = pool_->Free(slab->block); !s.ok()) {
      spdlog::warn("Dictionary: freeing a slab's block failed: {}", s.ToString());
    }
  }
}

int DictSlabs::ClassOf(size_t size) {
  int c = 0;
  while ((kMinSlot << c) < size) ++c;
  return c;
}

std::optional<DictSlabs::Slot> DictSlabs::Take(size_t size) {
  absl::flat_hash_set<Slab*>& open = open_[ClassOf(size)];
  if (open.empty()) return std::nullopt;
  Slab* slab = *open.begin();
  const uint32_t index = slab->free.back();
  slab->free.pop_back();
  if (slab->free.empty()) open.erase(slab);
  return Slot{slab, index};
}

absl::Status DictSlabs::AddSlab(size_t size, const common::BlockRef& block) {
  absl::StatusOr<absl::Span<char>> bytes = pool_->Resolve(block);
  if (!bytes.ok()) {
    (void)pool_->Free(block);
    return bytes.status();
  }
  auto slab = std::make_unique<Slab>();
  slab->block = block;
  slab->base = bytes->data();
  slab->size_class = ClassOf(size);
  slab->slot_bytes = static_cast<uint32_t>(kMinSlot << slab->size_class);
  slab->slots = static_cast<uint32_t>(kSlabBytes / slab->slot_bytes);
  slab->free.reserve(slab->slots);
  for (uint32_t i = slab->slots; i > 0; --i) slab->free.push_back(i - 1);
  Slab* raw = slab.get();
  open_[raw->size_class].insert(raw);
  slabs_.emplace(raw, std::move(slab));
  return absl::OkStatus();
}

char* DictSlabs::Data(const Slot& slot) const {
  return slot.slab->base + static_cast<size_t>(slot.index) * slot.slab->slot_bytes;
}

void DictSlabs::Release(const Slot& slot) {
  Slab* slab = slot.slab;
  slab->free.push_back(slot.index);
  if (slab->free.size() < slab->slots) {
    if (slab->free.size() == 1) open_[slab->size_class].insert(slab);  // was full
    return;
  }
  // Empty: back to the pool (a closed Dictionary leaves nothing behind).
  open_[slab->size_class].erase(slab);
  if (absl::Status s = pool_->Free(slab->block); !s.ok()) {
    spdlog::warn("Dictionary: freeing a slab's block failed: {}", s.ToString());
  }
  slabs_.erase(slab);
}

}  // namespace dragon::agent
