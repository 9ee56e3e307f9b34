#include "storage/memory_tier.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"

namespace vqkv::storage {

MemoryTier::MemoryTier(MemoryTierOptions options)
    : options_(std::move(options)) {
  const uint64_t capacity = std::max<uint64_t>(options_.capacity_bytes, 1);
  uint64_t n = static_cast<uint64_t>(std::max(options_.shards, 1));
  n = std::min(n, std::max<uint64_t>(1, capacity / kMinShardBytes));
  shard_capacity_ = capacity / n;
  shards_.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    auto shard = std::make_unique<Shard>();
    shard->capacity = capacity / n + (i < capacity % n ? 1 : 0);
    shards_.push_back(std::move(shard));
  }
}

MemoryTier::~MemoryTier() = default;

MemoryTier::Shard& MemoryTier::ShardFor(const BlockKey& key) const {
  const size_t h = absl::Hash<BlockKey>{}(key);
  return *shards_[h % shards_.size()];
}

MemoryTier::Entry MemoryTier::RemoveLocked(Shard& shard,
                                           std::list<Entry>::iterator it) {
  const uint64_t charge = ChargeFor(*it);
  shard.bytes -= it->bytes->size();
  shard.charged -= charge;
  total_bytes_.fetch_sub(charge, std::memory_order_relaxed);
  shard.index.erase(it->key);
  Entry out = std::move(*it);
  shard.lru.erase(it);
  return out;
}

absl::Status MemoryTier::EvictForLocked(Shard& shard, uint64_t incoming,
                                        std::vector<EvictedBlock>* out) {
  if (shard.charged + incoming <= shard.capacity) return absl::OkStatus();
  LeaseTable* const leases =
      options_.leases != nullptr && options_.leases->MayHaveLeases()
          ? options_.leases.get()
          : nullptr;
  const absl::Time now = leases != nullptr ? leases->Now() : absl::Time();
  auto leased = [&](const Entry& e) {
    return leases != nullptr && leases->IsLeased(e.key, now);
  };
  if (leases != nullptr) {
    // Can the unleased blocks make room? Checked first, so that a put that
    // fails evicts nothing. Walks from the least recently used end and stops
    // as soon as enough is freeable (usually after the first few blocks).
    uint64_t freeable = 0;
    for (auto it = shard.lru.rbegin();
         it != shard.lru.rend() &&
         shard.charged - freeable + incoming > shard.capacity;
         ++it) {
      if (!leased(*it)) freeable += ChargeFor(*it);
    }
    if (shard.charged - freeable + incoming > shard.capacity) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "memory tier: no room for ", incoming,
          " bytes: the shard is charged ", shard.charged, " of ",
          shard.capacity, " bytes and only ", freeable,
          " of them are not leased (leased blocks are not evicted)"));
    }
  }
  const int window = std::max(options_.eviction_candidates, 1);
  while (shard.charged + incoming > shard.capacity) {
    // Among the `window` least recently used unleased entries (at the back),
    // pick the greatest chain position; on ties keep the least recently
    // used.
    auto victim = shard.lru.end();
    int seen = 0;
    for (auto it = shard.lru.end(); seen < window && it != shard.lru.begin();) {
      --it;
      if (leased(*it)) continue;
      ++seen;
      if (victim == shard.lru.end() ||
          it->chain_position > victim->chain_position) {
        victim = it;
      }
    }
    if (victim == shard.lru.end()) {
      // Only leased blocks are left: a lease was granted after the check.
      return absl::ResourceExhaustedError(
          "memory tier: no room: every remaining block is leased");
    }
    if (options_.on_evict_locked) {
      options_.on_evict_locked(EvictedBlock{victim->key, victim->chain_position,
                                            victim->bytes,
                                            victim->written_micros});
    }
    Entry e = RemoveLocked(shard, victim);
    out->push_back(EvictedBlock{e.key, e.chain_position, std::move(e.bytes),
                                e.written_micros});
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
  return absl::OkStatus();
}

absl::Status MemoryTier::Put(const BlockKey& key, uint32_t chain_position,
                             absl::string_view block) {
  if (block.empty()) {
    return absl::InvalidArgumentError("memory tier: empty block");
  }
  // Check before copying, so a duplicate put costs no allocation.
  if (Contains(key)) return absl::OkStatus();
  return PutShared(key, chain_position, std::make_shared<std::string>(block));
}

absl::Status MemoryTier::PutShared(const BlockKey& key, uint32_t chain_position,
                                   SharedBytes bytes,
                                   std::vector<EvictedBlock>* evicted,
                                   int64_t written_micros) {
  if (bytes == nullptr || bytes->empty()) {
    return absl::InvalidArgumentError("memory tier: empty block");
  }
  Shard& shard = ShardFor(key);
  const uint64_t size = bytes->size();
  const uint64_t charge = size + options_.entry_overhead_bytes;
  if (charge > shard.capacity) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "memory tier: a block of ", size, " bytes (", charge,
        " with the entry overhead) is larger than a shard's budget of ",
        shard.capacity, " bytes"));
  }
  std::vector<EvictedBlock> local;
  std::vector<EvictedBlock>* out = evicted != nullptr ? evicted : &local;
  absl::Status status;
  {
    absl::MutexLock lock(&shard.mu);
    auto found = shard.index.find(key);
    if (found != shard.index.end()) {
      return absl::OkStatus();  // idempotent; keep the bytes we have
    }
    status = EvictForLocked(shard, charge, out);
    if (status.ok()) {
      shard.lru.push_front(
          Entry{key, chain_position, std::move(bytes), written_micros});
      shard.index.emplace(key, shard.lru.begin());
      shard.bytes += size;
      shard.charged += charge;
      total_bytes_.fetch_add(charge, std::memory_order_relaxed);
    }
  }
  // Blocks evicted before a failure are gone all the same: report them.
  if (evicted == nullptr && options_.on_evict) {
    for (const EvictedBlock& e : local) options_.on_evict(e);
  }
  return status;
}

absl::StatusOr<SharedBytes> MemoryTier::Get(const BlockKey& key) {
  Shard& shard = ShardFor(key);
  absl::MutexLock lock(&shard.mu);
  auto found = shard.index.find(key);
  if (found == shard.index.end()) {
    return absl::NotFoundError("memory tier: block not found");
  }
  shard.lru.splice(shard.lru.begin(), shard.lru, found->second);
  return found->second->bytes;
}

bool MemoryTier::Contains(const BlockKey& key) {
  Shard& shard = ShardFor(key);
  absl::MutexLock lock(&shard.mu);
  return shard.index.contains(key);
}

std::vector<bool> MemoryTier::Contains(absl::Span<const BlockKey> keys) {
  std::vector<bool> out(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) out[i] = Contains(keys[i]);
  return out;
}

absl::StatusOr<uint64_t> MemoryTier::Delete(const BlockKey& key) {
  Shard& shard = ShardFor(key);
  SharedBytes doomed;  // released after the lock
  absl::MutexLock lock(&shard.mu);
  auto found = shard.index.find(key);
  if (found == shard.index.end()) return uint64_t{0};
  Entry e = RemoveLocked(shard, found->second);
  const uint64_t size = e.bytes->size();
  doomed = std::move(e.bytes);
  return size;
}

absl::StatusOr<TierUsage> MemoryTier::DeleteNamespace(const NamespaceId& ns) {
  TierUsage removed;
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    absl::MutexLock lock(&shard.mu);
    for (auto it = shard.lru.begin(); it != shard.lru.end();) {
      if (it->key.ns == ns) {
        removed.bytes += it->bytes->size();
        ++removed.blocks;
        RemoveLocked(shard, it++);
      } else {
        ++it;
      }
    }
  }
  return removed;
}

TierUsage MemoryTier::Usage() const {
  TierUsage usage;
  for (const auto& shard_ptr : shards_) {
    absl::MutexLock lock(&shard_ptr->mu);
    usage.bytes += shard_ptr->bytes;
    usage.blocks += shard_ptr->index.size();
  }
  return usage;
}

uint64_t MemoryTier::charged_bytes() const {
  uint64_t charged = 0;
  for (const auto& shard_ptr : shards_) {
    absl::MutexLock lock(&shard_ptr->mu);
    charged += shard_ptr->charged;
  }
  return charged;
}

std::vector<EvictedBlock> MemoryTier::Snapshot() const {
  std::vector<EvictedBlock> out;
  for (const auto& shard_ptr : shards_) {
    absl::MutexLock lock(&shard_ptr->mu);
    for (const Entry& e : shard_ptr->lru) {
      out.push_back(
          EvictedBlock{e.key, e.chain_position, e.bytes, e.written_micros});
    }
  }
  return out;
}

}  // namespace vqkv::storage
