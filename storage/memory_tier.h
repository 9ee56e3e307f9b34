// MemoryTier: blocks in RAM, sharded, LRU by bytes under a hard budget.
//
// Budget: capacity_bytes is split evenly across the shards (a key's shard is
// chosen by its hash), and each shard keeps the bytes it holds at or below
// its share: a put evicts until the new block fits. A block larger than a
// shard's share can never fit and is refused with kResourceExhausted. The
// shard count is clamped so that every shard gets at least kMinShardBytes
// (a 1 MiB tier has one shard), so the largest storable block is
// capacity_bytes / shards.
//
// Eviction policy ("the tail of a prefix before its head"): a prefix chain is
// only useful from its first block, so losing block i makes blocks i+1.. of
// that chain useless. The victim is chosen among the `eviction_candidates`
// least recently used blocks of the shard: the one with the greatest chain
// position, ties broken by least recent use. With eviction_candidates = 1
// this is plain LRU. Get() marks a block used; Contains() does not.
//
// Leases (storage/lease_table.h): with options.leases, eviction passes over
// every leased block (the window above counts unleased blocks only). A put
// that cannot make room from unleased blocks fails with kResourceExhausted
// and evicts nothing: a lease is never broken for room. Delete and
// DeleteNamespace remove leased blocks like any other.
//
// Evicted blocks are handed to on_evict (so a tiered store can spill them to
// disk), called on the thread that caused the eviction, after the shard lock
// is released, so on_evict may call back into this tier.
//
// Thread safety: all methods are thread-safe; shards have independent locks.
#ifndef VQKV_STORAGE_MEMORY_TIER_H_
#define VQKV_STORAGE_MEMORY_TIER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "storage/keys.h"
#include "storage/lease_table.h"
#include "storage/tier.h"

namespace vqkv::storage {

// A block leaving the memory tier.
struct EvictedBlock {
  BlockKey key;
  uint32_t chain_position = 0;
  SharedBytes bytes;
};

struct MemoryTierOptions {
  uint64_t capacity_bytes = uint64_t{1} << 30;
  int shards = 16;
  // LRU window the tail-first policy picks its victim from; >= 1.
  int eviction_candidates = 4;
  // Called once per evicted block (not for Delete/DeleteNamespace). May be
  // empty. Must be thread-safe.
  std::function<void(const EvictedBlock&)> on_evict;
  // Called for each evicted block while its shard lock is still held, i.e.
  // before the block stops being visible through Get/Contains, and before
  // on_evict or the PutShared `evicted` list sees it. Lets a caller keep an
  // evicted block visible elsewhere without a gap. Must be short, must not
  // call into this tier. May be empty.
  std::function<void(const EvictedBlock&)> on_evict_locked;
  // Leases eviction must respect; null: none. Shared with other tiers.
  std::shared_ptr<LeaseTable> leases;
};

class MemoryTier : public Tier {
 public:
  static constexpr uint64_t kMinShardBytes = uint64_t{8} << 20;  // 8 MiB

  // REQUIRES: options.capacity_bytes > 0.
  explicit MemoryTier(MemoryTierOptions options);
  ~MemoryTier() override;

  absl::string_view name() const override { return "memory"; }

  // Copies `block`. See Tier::Put. Evictions go to on_evict.
  absl::Status Put(const BlockKey& key, uint32_t chain_position,
                   absl::string_view block) override;

  // Stores shared bytes without copying them. If `evicted` is not null, the
  // blocks this put evicted are appended to it instead of being passed to
  // on_evict (the caller handles them, e.g. after releasing its own locks).
  // Returns OK for a key already held (idempotent, existing bytes kept).
  // Errors: kInvalidArgument for null or empty bytes; kResourceExhausted
  // when the block is larger than a shard's share of the budget, or when
  // making room would take evicting leased blocks (then nothing is evicted).
  absl::Status PutShared(const BlockKey& key, uint32_t chain_position,
                         SharedBytes bytes,
                         std::vector<EvictedBlock>* evicted = nullptr);

  absl::StatusOr<SharedBytes> Get(const BlockKey& key) override;
  std::vector<bool> Contains(absl::Span<const BlockKey> keys) override;
  bool Contains(const BlockKey& key);
  absl::StatusOr<uint64_t> Delete(const BlockKey& key) override;
  absl::StatusOr<TierUsage> DeleteNamespace(const NamespaceId& ns) override;
  TierUsage Usage() const override;

  // Every block held now (shared bytes, no copy), in no particular order.
  std::vector<EvictedBlock> Snapshot() const;

  int num_shards() const { return static_cast<int>(shards_.size()); }
  // The largest block this tier can hold.
  uint64_t shard_capacity() const { return shard_capacity_; }
  // Bytes held now, without taking the shard locks (Usage() takes them all):
  // a relaxed counter, for hints on hot paths.
  uint64_t approximate_bytes() const {
    return total_bytes_.load(std::memory_order_relaxed);
  }
  // Blocks evicted since construction.
  uint64_t evictions() const {
    return evictions_.load(std::memory_order_relaxed);
  }

 private:
  struct Entry {
    BlockKey key;
    uint32_t chain_position;
    SharedBytes bytes;
  };
  struct Shard {
    mutable absl::Mutex mu;
    // Front = most recently used.
    std::list<Entry> lru ABSL_GUARDED_BY(mu);
    absl::flat_hash_map<BlockKey, std::list<Entry>::iterator> index
        ABSL_GUARDED_BY(mu);
    uint64_t bytes ABSL_GUARDED_BY(mu) = 0;
    uint64_t capacity = 0;
  };

  Shard& ShardFor(const BlockKey& key) const;
  // Evicts unleased blocks from `shard` until `incoming` more bytes fit its
  // capacity. kResourceExhausted when the unleased blocks cannot free
  // enough; then nothing is evicted, except when a lease was granted
  // concurrently, after the check that room can be made (the blocks evicted
  // before that are in `out` all the same).
  absl::Status EvictForLocked(Shard& shard, uint64_t incoming,
                              std::vector<EvictedBlock>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);

  const MemoryTierOptions options_;
  uint64_t shard_capacity_ = 0;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> total_bytes_{0};
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_MEMORY_TIER_H_
