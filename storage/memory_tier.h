// MemoryTier: blocks in RAM, sharded, LRU by bytes under a hard budget.
//
// Budget: capacity_bytes is split evenly across the shards (a key's shard is
// chosen by its hash), and each shard keeps the bytes it is charged at or
// below its share: a put evicts until the new block fits. Each block is
// charged its size plus options.entry_overhead_bytes (default
// kEntryOverheadBytes: the heap the tier spends per entry besides the block
// bytes: the shared_ptr control block and string object, the LRU list node,
// the hash index slot, allocator rounding), so the budget bounds the tier's
// total heap, not just its payload: many tiny blocks cannot overrun it.
// Usage() reports payload bytes (the block sizes); charged_bytes() what the
// budget counts. A block whose charge is larger than a shard's share can
// never fit and is refused with kResourceExhausted. The shard count is
// clamped so that every shard gets at least kMinShardBytes (a 1 MiB tier has
// one shard), so the largest storable block is
// capacity_bytes / shards - entry_overhead_bytes.
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
  // Write time (Unix micros) of the disk record this copy was promoted
  // from, 0 when it was not: a re-spill keeps it, so the disk TTL still
  // counts from the original write.
  int64_t written_micros = 0;
};

// Heap bytes the memory tier spends per entry besides the block bytes:
// measured 229 (100,000 entries) to 269 (57,345 entries, just after the
// hash index grew) for 96-byte blocks with glibc malloc
// (tests/unit/storage/memory_tier_test.cc `EntryOverheadCoversMeasuredHeap`,
// docs/RELIABILITY.md); rounded up, with room for the allocator's rounding
// of other block sizes (up to 24 bytes).
inline constexpr uint64_t kEntryOverheadBytes = 288;

struct MemoryTierOptions {
  uint64_t capacity_bytes = uint64_t{1} << 30;
  int shards = 16;
  // Charged per entry on top of its block bytes (see the header comment).
  uint64_t entry_overhead_bytes = kEntryOverheadBytes;
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
  // written_micros: see EvictedBlock (0: not promoted from disk).
  absl::Status PutShared(const BlockKey& key, uint32_t chain_position,
                         SharedBytes bytes,
                         std::vector<EvictedBlock>* evicted = nullptr,
                         int64_t written_micros = 0);

  absl::StatusOr<SharedBytes> Get(const BlockKey& key) override;
  std::vector<bool> Contains(absl::Span<const BlockKey> keys) override;
  bool Contains(const BlockKey& key);
  absl::StatusOr<uint64_t> Delete(const BlockKey& key) override;
  absl::StatusOr<TierUsage> DeleteNamespace(const NamespaceId& ns) override;
  TierUsage Usage() const override;

  // Every block held now (shared bytes, no copy), in no particular order.
  std::vector<EvictedBlock> Snapshot() const;

  int num_shards() const { return static_cast<int>(shards_.size()); }
  // The largest charge (block bytes + entry overhead) this tier can hold.
  uint64_t shard_capacity() const { return shard_capacity_; }
  uint64_t entry_overhead_bytes() const {
    return options_.entry_overhead_bytes;
  }
  // What the budget counts now: block bytes plus the entry overhead of
  // every entry (takes the shard locks).
  uint64_t charged_bytes() const;
  // Bytes charged now (as charged_bytes()), without taking the shard locks:
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
    int64_t written_micros;
  };
  struct Shard {
    mutable absl::Mutex mu;
    // Front = most recently used.
    std::list<Entry> lru ABSL_GUARDED_BY(mu);
    absl::flat_hash_map<BlockKey, std::list<Entry>::iterator> index
        ABSL_GUARDED_BY(mu);
    uint64_t bytes ABSL_GUARDED_BY(mu) = 0;    // block bytes
    uint64_t charged ABSL_GUARDED_BY(mu) = 0;  // + entry overheads
    uint64_t capacity = 0;
  };

  Shard& ShardFor(const BlockKey& key) const;
  uint64_t ChargeFor(const Entry& e) const {
    return e.bytes->size() + options_.entry_overhead_bytes;
  }
  // Unlinks `it` from `shard` and its accounting; returns the entry.
  Entry RemoveLocked(Shard& shard, std::list<Entry>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  // Evicts unleased blocks from `shard` until a charge of `incoming` more
  // bytes fits its capacity. kResourceExhausted when the unleased blocks cannot
  // free enough; then nothing is evicted, except when a lease was granted
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
