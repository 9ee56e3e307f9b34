#include "storage/lease_table.h"

#include <algorithm>
#include <utility>

#include "absl/hash/hash.h"

namespace vqkv::storage {

LeaseTable::LeaseTable(LeaseTableOptions options)
    : options_(std::move(options)) {
  const size_t max_leases = std::max<size_t>(options_.max_leases, 1);
  const size_t n = std::clamp<size_t>(
      static_cast<size_t>(std::max(options_.shards, 1)), 1, max_leases);
  shard_capacity_ = max_leases / n;
  shards_.reserve(n);
  for (size_t i = 0; i < n; ++i) shards_.push_back(std::make_unique<Shard>());
}

LeaseTable::~LeaseTable() = default;

absl::Time LeaseTable::Now() const {
  return options_.clock ? options_.clock() : absl::Now();
}

LeaseTable::Shard& LeaseTable::ShardFor(const BlockKey& key) const {
  // Mixed differently from the memory tier's shard choice (which takes the
  // same hash modulo its shard count), so one tier shard's keys spread over
  // all lease shards.
  const size_t h = absl::Hash<std::pair<BlockKey, int>>{}({key, 1});
  return *shards_[h % shards_.size()];
}

size_t LeaseTable::SweepLocked(Shard& shard, absl::Time now) {
  const size_t before = shard.until.size();
  absl::erase_if(shard.until,
                 [now](const auto& entry) { return entry.second <= now; });
  const size_t dropped = before - shard.until.size();
  entries_.fetch_sub(dropped, std::memory_order_relaxed);
  shard.sweep_at = std::max(kMinSweepAt, 2 * shard.until.size());
  return dropped;
}

bool LeaseTable::Lease(const BlockKey& key, absl::Time until) {
  Shard& shard = ShardFor(key);
  absl::MutexLock lock(&shard.mu);
  auto found = shard.until.find(key);
  if (found != shard.until.end()) {
    found->second = std::max(found->second, until);
    return true;
  }
  if (shard.until.size() >= shard.sweep_at ||
      shard.until.size() >= shard_capacity_) {
    SweepLocked(shard, Now());
    if (shard.until.size() >= shard_capacity_) return false;
  }
  shard.until.emplace(key, until);
  entries_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool LeaseTable::IsLeased(const BlockKey& key, absl::Time now) {
  if (!MayHaveLeases()) return false;
  Shard& shard = ShardFor(key);
  absl::MutexLock lock(&shard.mu);
  auto found = shard.until.find(key);
  if (found == shard.until.end()) return false;
  if (found->second > now) return true;
  shard.until.erase(found);
  entries_.fetch_sub(1, std::memory_order_relaxed);
  return false;
}

void LeaseTable::Release(const BlockKey& key) {
  if (!MayHaveLeases()) return;
  Shard& shard = ShardFor(key);
  absl::MutexLock lock(&shard.mu);
  if (shard.until.erase(key) > 0) {
    entries_.fetch_sub(1, std::memory_order_relaxed);
  }
}

void LeaseTable::ReleaseNamespace(const NamespaceId& ns) {
  if (!MayHaveLeases()) return;
  for (auto& shard_ptr : shards_) {
    Shard& shard = *shard_ptr;
    absl::MutexLock lock(&shard.mu);
    const size_t before = shard.until.size();
    absl::erase_if(shard.until,
                   [&ns](const auto& entry) { return entry.first.ns == ns; });
    entries_.fetch_sub(before - shard.until.size(), std::memory_order_relaxed);
  }
}

size_t LeaseTable::SweepExpired() {
  const absl::Time now = Now();
  size_t dropped = 0;
  for (auto& shard_ptr : shards_) {
    absl::MutexLock lock(&shard_ptr->mu);
    dropped += SweepLocked(*shard_ptr, now);
  }
  return dropped;
}

}  // namespace vqkv::storage
