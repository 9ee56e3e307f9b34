// LeaseTable: time-limited leases on block keys, shared by the tiers of a
// store so that a block looked up a moment ago is not evicted before the
// caller reads it (LookupRequest.lease_ms in proto/vqkv/v1/kvcache.proto).
//
// A lease is a hint, never a reservation: the tiers consult the table when
// they choose a block to evict for room (MemoryTier's eviction, RocksDbTier's
// disk budget) and pass over leased blocks; an explicit delete, and expiry by
// the disk TTL, ignore leases. A lease on a key covers that key in every tier
// (a block moving from memory to disk keeps its lease).
//
// Semantics: Lease(key, until) sets the key's lease end to `until`, or keeps
// a later end already there (a lease extends, never shortens). A key is
// leased at time t iff its lease end is after t.
//
// Memory bound: at most max_leases entries are held (spread over the shards,
// each holding at most max_leases / shards); a lease on a new key that finds
// its shard full, even after dropping its expired entries, is refused (Lease
// returns false). Expired entries are dropped lazily: when IsLeased meets
// one, and by a sweep of a shard whose size has doubled since its last sweep,
// so expired entries never outnumber live ones by more than a constant.
//
// Thread safety: all methods are thread-safe; shards have independent locks.
// The locks are leaves: the table never calls out while holding one, so
// callers may use it while holding their own locks (the memory tier consults
// it under its shard lock, the disk tier under its index lock).
#ifndef VQKV_STORAGE_LEASE_TABLE_H_
#define VQKV_STORAGE_LEASE_TABLE_H_

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/keys.h"

namespace vqkv::storage {

struct LeaseTableOptions {
  // Time source for Now(). Default absl::Now. Must be thread-safe.
  std::function<absl::Time()> clock;
  // The most lease entries held at once (live or not yet dropped); >= 1.
  size_t max_leases = size_t{1} << 20;
  // Independent locks; clamped to [1, max_leases].
  int shards = 16;
};

class LeaseTable {
 public:
  explicit LeaseTable(LeaseTableOptions options = {});
  LeaseTable(const LeaseTable&) = delete;
  LeaseTable& operator=(const LeaseTable&) = delete;
  ~LeaseTable();

  // The table's clock.
  absl::Time Now() const;

  // Leases `key` until `until`, or keeps its lease if that ends later.
  // Returns false, changing nothing, when `key` holds no entry and its shard
  // is full of live leases (the lease is not granted); true otherwise.
  bool Lease(const BlockKey& key, absl::Time until);

  // Whether `key` is leased at `now` (its lease ends after `now`). An expired
  // entry met here is dropped.
  bool IsLeased(const BlockKey& key, absl::Time now);
  bool IsLeased(const BlockKey& key) { return IsLeased(key, Now()); }

  // False when no key is leased (no entry is held): a lock-free check that
  // lets an evictor skip IsLeased altogether. True may include entries that
  // have expired but are not yet dropped.
  bool MayHaveLeases() const {
    return entries_.load(std::memory_order_relaxed) > 0;
  }

  // Drops the lease of `key` / of every key of `ns` (the block is deleted).
  void Release(const BlockKey& key);
  void ReleaseNamespace(const NamespaceId& ns);

  // Drops every expired entry now; returns how many.
  size_t SweepExpired();

  // Entries held now (live leases plus expired ones not yet dropped).
  size_t size() const { return entries_.load(std::memory_order_relaxed); }
  size_t max_leases() const { return shard_capacity_ * shards_.size(); }

 private:
  // A shard sweeps its expired entries when it reaches this many, then sets
  // the next sweep at twice its live count (at least this many).
  static constexpr size_t kMinSweepAt = 64;

  struct Shard {
    absl::Mutex mu;
    absl::flat_hash_map<BlockKey, absl::Time> until ABSL_GUARDED_BY(mu);
    size_t sweep_at ABSL_GUARDED_BY(mu) = kMinSweepAt;
  };

  Shard& ShardFor(const BlockKey& key) const;
  // Drops the shard's entries that end at or before `now`; returns how many.
  size_t SweepLocked(Shard& shard, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);

  const LeaseTableOptions options_;
  size_t shard_capacity_ = 1;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<size_t> entries_{0};
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_LEASE_TABLE_H_
