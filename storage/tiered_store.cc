#include "storage/tiered_store.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "kernels/block.h"
#include "storage/lease_table.h"
#include "storage/memory_tier.h"
#include "storage/rocksdb_tier.h"

namespace vqkv::storage {

absl::string_view DurabilityName(Durability d) {
  return d == Durability::kSync ? "sync" : "async";
}

absl::StatusOr<Durability> ParseDurability(absl::string_view text) {
  if (text == "async") return Durability::kAsync;
  if (text == "sync") return Durability::kSync;
  return absl::InvalidArgumentError(
      absl::StrCat("durability must be 'async' or 'sync', got '", text, "'"));
}

absl::string_view WritePolicyName(WritePolicy p) {
  return p == WritePolicy::kWriteThrough ? "write_through" : "spill";
}

absl::StatusOr<WritePolicy> ParseWritePolicy(absl::string_view text) {
  if (text == "spill") return WritePolicy::kSpill;
  if (text == "write_through") return WritePolicy::kWriteThrough;
  return absl::InvalidArgumentError(absl::StrCat(
      "write policy must be 'spill' or 'write_through', got '", text, "'"));
}

// Locking: a put, promotion, delete or spill of key K holds stripe(K) while
// it checks and changes where K lives, so the per-namespace ledger counts
// each block exactly once. mu_ guards the ledger, namespaces, quotas and
// the codebook registry; it is only held for short in-memory work and never
// while calling into a tier that could call back (disk drops call
// OnDiskDrop, which takes mu_).
class TieredStore::Impl {
 public:
  explicit Impl(TieredStoreOptions options) : options_(std::move(options)) {
    if (options_.durability == Durability::kSync) {
      options_.write_policy = WritePolicy::kWriteThrough;
    }
  }

  absl::Status Init();

  absl::Status PutBlock(absl::string_view tenant, const BlockPut& put);
  std::vector<absl::Status> PutBlocks(absl::string_view tenant,
                                      absl::Span<const BlockPut> puts);
  absl::StatusOr<SharedBytes> GetBlock(absl::string_view tenant,
                                       const BlockKey& key);
  std::optional<std::vector<absl::StatusOr<SharedBytes>>> GetBlocksFromMemory(
      absl::string_view tenant, const NamespaceId& ns,
      absl::Span<const BlockHash> hashes);
  bool PutMayTouchDisk(uint64_t bytes) const;
  LookupResult Lookup(absl::string_view tenant, const NamespaceId& ns,
                      absl::Span<const BlockHash> hashes, absl::Duration lease);
  absl::Status DeleteBlock(absl::string_view tenant, const BlockKey& key);
  absl::StatusOr<NamespaceInfo> DeleteNamespace(absl::string_view tenant,
                                                const NamespaceId& ns);
  absl::StatusOr<NamespaceInfo> GetNamespaceInfo(const NamespaceId& ns) const;

  absl::Status PutCodebooks(uint64_t hash, absl::string_view bytes);
  absl::StatusOr<SharedBytes> GetCodebooks(uint64_t hash);
  bool HasCodebook(uint64_t hash) const;

  void SetTenantQuota(absl::string_view tenant, uint64_t bytes);
  uint64_t TenantUsage(absl::string_view tenant) const;

  absl::Status Flush();
  uint64_t SweepExpired() { return disk_ ? disk_->SweepExpired() : 0; }
  StoreStats Stats() const;
  const TieredStoreOptions& options() const { return options_; }

 private:
  struct NsState {
    bool owned = false;  // false: has blocks on disk but no owner record
    std::string tenant;
    uint64_t bytes = 0;
    uint64_t blocks = 0;
  };
  static constexpr size_t kStripes = 64;

  absl::Mutex& StripeFor(const BlockKey& key) {
    return stripes_[absl::Hash<BlockKey>{}(key) % kStripes];
  }
  bool OwnedBy(absl::string_view tenant, const NamespaceId& ns) const;
  uint64_t QuotaForLocked(absl::string_view tenant) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void ChargeLocked(const NamespaceId& ns, uint64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Uncharge(const NamespaceId& ns, uint64_t bytes);
  // Verification and the codebook check of a put (no locks needed).
  absl::Status CheckBlock(const BlockPut& put) const;
  // Claims `ns` for `tenant` if unowned, else checks the owner.
  // kPermissionDenied for another tenant's namespace; in sync mode the
  // owner record's disk error. REQUIRES: a stripe lock of a key in `ns`.
  absl::Status ClaimNamespace(absl::string_view tenant, const NamespaceId& ns);
  // PutBlocks with a disk write per batch: the blocks of one call go to
  // RocksDB in one write batch (one fsync in sync mode) instead of one each.
  // REQUIRES: write_through() and a disk tier.
  std::vector<absl::Status> PutBlocksWriteThrough(
      absl::string_view tenant, absl::Span<const BlockPut> puts);
  // Takes care of blocks the memory tier evicted: spill to disk, or drop
  // them from the ledger. REQUIRES: no stripe lock held.
  void HandleEvictions(std::vector<EvictedBlock>& evicted);
  void OnDiskDrop(const DroppedBlock& drop);
  void NoteDiskFault(const absl::Status& status, absl::string_view what);
  void CacheCodebookLocked(uint64_t hash, SharedBytes bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool write_through() const {
    return options_.write_policy == WritePolicy::kWriteThrough;
  }
  bool sync() const { return options_.durability == Durability::kSync; }
  // Whether `key` is held in memory, being spilled, or on disk.
  bool Held(const BlockKey& key) {
    return memory_->Contains(key) || FindPending(key) != nullptr ||
           (disk_ != nullptr && disk_->Contains(key));
  }

  TieredStoreOptions options_;
  // Leases of looked-up blocks, consulted by both tiers' eviction.
  std::shared_ptr<LeaseTable> leases_;
  std::unique_ptr<MemoryTier> memory_;
  std::unique_ptr<RocksDbTier> disk_;  // null: memory only
  std::array<absl::Mutex, kStripes> stripes_;

  // Blocks evicted from memory and not yet spilled (or dropped): still
  // served, so a spill in progress never shows as a miss.
  SharedBytes FindPending(const BlockKey& key) const {
    absl::MutexLock lock(&pending_mu_);
    auto it = pending_.find(key);
    return it == pending_.end() ? nullptr : it->second;
  }
  // Removes the entry if it still holds `bytes` (or any, when null).
  // Returns the bytes removed, or null.
  SharedBytes ErasePending(const BlockKey& key, const SharedBytes& bytes) {
    absl::MutexLock lock(&pending_mu_);
    auto it = pending_.find(key);
    if (it == pending_.end()) return nullptr;
    if (bytes != nullptr && it->second != bytes) return nullptr;
    SharedBytes out = std::move(it->second);
    pending_.erase(it);
    return out;
  }
  mutable absl::Mutex pending_mu_;
  absl::flat_hash_map<BlockKey, SharedBytes> pending_
      ABSL_GUARDED_BY(pending_mu_);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<NamespaceId, NsState> namespaces_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> tenant_usage_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> quotas_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> codebooks_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, SharedBytes> codebook_cache_
      ABSL_GUARDED_BY(mu_);
  uint64_t codebook_cache_bytes_ ABSL_GUARDED_BY(mu_) = 0;

  mutable absl::Mutex fault_mu_;
  std::string last_disk_error_ ABSL_GUARDED_BY(fault_mu_);
  bool fault_logged_ ABSL_GUARDED_BY(fault_mu_) = false;

  std::atomic<uint64_t> puts_{0}, duplicate_puts_{0}, puts_rejected_{0},
      quota_rejections_{0}, memory_hits_{0}, disk_hits_{0}, misses_{0},
      spills_{0}, dropped_{0}, promotions_{0}, disk_faults_{0};
};

absl::Status TieredStore::Impl::Init() {
  if (options_.memory_bytes == 0) {
    return absl::InvalidArgumentError("memory_bytes must be positive");
  }
  if (options_.memory_shards < 1) {
    return absl::InvalidArgumentError("memory_shards must be at least 1");
  }
  quotas_ = options_.tenant_quotas;
  LeaseTableOptions lease_options;
  lease_options.clock = options_.clock;
  lease_options.max_leases = std::max<size_t>(options_.max_leases, 1);
  leases_ = std::make_shared<LeaseTable>(std::move(lease_options));
  MemoryTierOptions mem;
  mem.capacity_bytes = options_.memory_bytes;
  mem.shards = options_.memory_shards;
  mem.leases = leases_;
  if (!options_.data_dir.empty()) {
    // Evicted blocks stay visible (pending_) until they are on disk.
    mem.on_evict_locked = [this](const EvictedBlock& e) {
      absl::MutexLock lock(&pending_mu_);
      pending_[e.key] = e.bytes;
    };
  }
  memory_ = std::make_unique<MemoryTier>(std::move(mem));
  if (options_.data_dir.empty()) return absl::OkStatus();

  if (options_.disk_bytes == 0) {
    return absl::InvalidArgumentError("disk_bytes must be positive");
  }
  std::error_code ec;
  std::filesystem::create_directories(options_.data_dir, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat(
        "cannot create data dir ", options_.data_dir, ": ", ec.message()));
  }
  RocksDbTierOptions disk;
  disk.path = options_.data_dir;
  disk.capacity_bytes = options_.disk_bytes;
  disk.sync_writes = sync();
  disk.ttl = options_.ttl;
  disk.clock = options_.clock;
  disk.file_system = options_.file_system;
  disk.on_drop = [this](const DroppedBlock& d) { OnDiskDrop(d); };
  disk.leases = leases_;
  absl::StatusOr<std::unique_ptr<RocksDbTier>> opened =
      RocksDbTier::Open(std::move(disk));
  if (!opened.ok()) return opened.status();
  disk_ = std::move(*opened);

  absl::MutexLock lock(&mu_);
  for (auto& [ns, info] : disk_->Namespaces()) {
    NsState& state = namespaces_[ns];
    state.owned = info.has_owner || info.blocks == 0;
    state.tenant = info.tenant;
    state.bytes = info.bytes;
    state.blocks = info.blocks;
    if (state.owned) tenant_usage_[state.tenant] += state.bytes;
  }
  for (uint64_t hash : disk_->CodebookHashes()) codebooks_.insert(hash);
  return absl::OkStatus();
}

bool TieredStore::Impl::OwnedBy(absl::string_view tenant,
                                const NamespaceId& ns) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = namespaces_.find(ns);
  return it != namespaces_.end() && it->second.owned &&
         it->second.tenant == tenant;
}

uint64_t TieredStore::Impl::QuotaForLocked(absl::string_view tenant) const {
  auto it = quotas_.find(tenant);
  return it != quotas_.end() ? it->second : options_.default_tenant_quota;
}

void TieredStore::Impl::ChargeLocked(const NamespaceId& ns, uint64_t bytes) {
  NsState& state = namespaces_[ns];
  state.bytes += bytes;
  ++state.blocks;
  if (state.owned) tenant_usage_[state.tenant] += bytes;
}

void TieredStore::Impl::Uncharge(const NamespaceId& ns, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end()) return;
  NsState& state = it->second;
  const uint64_t b = std::min(bytes, state.bytes);
  state.bytes -= b;
  if (state.blocks > 0) --state.blocks;
  if (state.owned) {
    uint64_t& usage = tenant_usage_[state.tenant];
    usage -= std::min(usage, b);
  }
}

void TieredStore::Impl::NoteDiskFault(const absl::Status& status,
                                      absl::string_view what) {
  disk_faults_.fetch_add(1);
  absl::MutexLock lock(&fault_mu_);
  last_disk_error_ = absl::StrCat(what, ": ", status.ToString());
  if (!fault_logged_) {
    fault_logged_ = true;
    if (options_.log_to_stderr) {
      std::fprintf(stderr,
                   "vqkv storage: disk tier fault (first occurrence; serving "
                   "from memory, further faults counted in stats): %s\n",
                   last_disk_error_.c_str());
    }
  }
}

void TieredStore::Impl::OnDiskDrop(const DroppedBlock& drop) {
  if (drop.reason == DropReason::kEvicted) dropped_.fetch_add(1);
  // The block left the store unless memory still holds it.
  if (!memory_->Contains(drop.key)) Uncharge(drop.key.ns, drop.bytes);
}

void TieredStore::Impl::HandleEvictions(std::vector<EvictedBlock>& evicted) {
  for (EvictedBlock& e : evicted) {
    absl::MutexLock stripe(&StripeFor(e.key));
    if (disk_ == nullptr) {
      if (!memory_->Contains(e.key)) dropped_.fetch_add(1);
      Uncharge(e.key.ns, e.bytes->size());
      continue;
    }
    // Still pending? If not, a delete removed it meanwhile.
    if (FindPending(e.key) != e.bytes) continue;
    if (disk_->Contains(e.key) || memory_->Contains(e.key)) {
      // Already on disk (write-through, or spilled before), or back in
      // memory (promoted): nothing to write.
      ErasePending(e.key, e.bytes);
      continue;
    }
    absl::Status s = disk_->Put(e.key, e.chain_position, *e.bytes);
    if (s.ok()) {
      spills_.fetch_add(1);
    } else {
      NoteDiskFault(s, "spill");
      dropped_.fetch_add(1);
      Uncharge(e.key.ns, e.bytes->size());
    }
    ErasePending(e.key, e.bytes);
  }
  evicted.clear();
}

absl::Status TieredStore::Impl::CheckBlock(const BlockPut& put) const {
  const auto* data = reinterpret_cast<const uint8_t*>(put.block.data());
  absl::StatusOr<BlockHeader> header = VerifyBlock(data, put.block.size());
  if (!header.ok()) return header.status();
  if (header->codebook_hash != 0 && !HasCodebook(header->codebook_hash)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "block refers to codebook set ", absl::Hex(header->codebook_hash),
        ", which is not registered (PutCodebooks first)"));
  }
  return absl::OkStatus();
}

absl::Status TieredStore::Impl::ClaimNamespace(absl::string_view tenant,
                                               const NamespaceId& ns) {
  bool claimed = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = namespaces_.find(ns);
    if (it != namespaces_.end() && it->second.owned) {
      if (it->second.tenant != tenant) {
        return absl::PermissionDeniedError(
            "namespace belongs to another tenant");
      }
    } else {
      NsState& state = namespaces_[ns];
      state.owned = true;
      state.tenant = std::string(tenant);
      tenant_usage_[state.tenant] += state.bytes;
      claimed = true;
    }
  }
  if (claimed && disk_ != nullptr) {
    absl::Status s = disk_->PutNamespaceOwner(ns, tenant);
    if (!s.ok()) {
      NoteDiskFault(s, "namespace owner");
      if (sync()) return s;
    }
  }
  return absl::OkStatus();
}

absl::Status TieredStore::Impl::PutBlock(absl::string_view tenant,
                                         const BlockPut& put) {
  auto reject = [this](absl::Status s) {
    puts_rejected_.fetch_add(1);
    return s;
  };
  if (absl::Status s = CheckBlock(put); !s.ok()) return reject(s);
  const BlockKey& key = put.key;
  const uint64_t size = put.block.size();

  std::vector<EvictedBlock> evicted;
  absl::Status result;
  {
    absl::MutexLock stripe(&StripeFor(key));
    if (absl::Status s = ClaimNamespace(tenant, key.ns); !s.ok()) {
      return reject(s);
    }

    if (memory_->Contains(key) || FindPending(key) != nullptr) {
      duplicate_puts_.fetch_add(1);
      return absl::OkStatus();
    }
    if (disk_ != nullptr) {
      disk_->DropIfExpired(key);
      if (disk_->Contains(key)) {
        duplicate_puts_.fetch_add(1);
        return absl::OkStatus();
      }
    }
    {
      absl::MutexLock lock(&mu_);
      const uint64_t quota = QuotaForLocked(tenant);
      const uint64_t used = tenant_usage_[std::string(tenant)];
      if (quota != 0 && used + size > quota) {
        quota_rejections_.fetch_add(1);
        return reject(absl::ResourceExhaustedError(
            absl::StrCat("tenant quota exceeded: ", used, " + ", size, " > ",
                         quota, " bytes")));
      }
      ChargeLocked(key.ns, size);
    }

    auto bytes = std::make_shared<const std::string>(put.block);
    absl::Status mem =
        memory_->PutShared(key, put.chain_position, bytes, &evicted);
    if (!mem.ok()) {
      // Too large for memory, or memory's room is held by leased blocks:
      // disk only, if there is one.
      absl::Status s = mem;
      if (disk_ != nullptr) {
        s = disk_->Put(key, put.chain_position, put.block);
        if (!s.ok()) NoteDiskFault(s, "put");
      }
      if (!s.ok()) {
        Uncharge(key.ns, size);
        result = reject(s);
      }
    } else if (write_through() && disk_ != nullptr) {
      absl::Status s = disk_->Put(key, put.chain_position, put.block);
      if (!s.ok()) {
        NoteDiskFault(s, "write-through put");
        if (sync()) {
          memory_->Delete(key).IgnoreError();
          Uncharge(key.ns, size);
          result = reject(s);
        }
      }
    }
    if (result.ok()) puts_.fetch_add(1);
  }
  HandleEvictions(evicted);
  return result;
}

std::vector<absl::Status> TieredStore::Impl::PutBlocks(
    absl::string_view tenant, absl::Span<const BlockPut> puts) {
  if (puts.size() > 1 && write_through() && disk_ != nullptr) {
    return PutBlocksWriteThrough(tenant, puts);
  }
  std::vector<absl::Status> out;
  out.reserve(puts.size());
  for (const BlockPut& p : puts) out.push_back(PutBlock(tenant, p));
  return out;
}

std::vector<absl::Status> TieredStore::Impl::PutBlocksWriteThrough(
    absl::string_view tenant, absl::Span<const BlockPut> puts) {
  std::vector<absl::Status> results(puts.size());
  for (size_t i = 0; i < puts.size(); ++i) results[i] = CheckBlock(puts[i]);

  // The stripes of every key in the batch, locked in ascending order (no
  // other path holds two stripes, so this cannot deadlock) and held until
  // the batch is on disk, as PutBlock holds its one stripe: a concurrent put
  // of the same key waits, so it is never acknowledged before the block is
  // durable, and a concurrent delete cannot slip between memory and disk.
  std::vector<size_t> stripe_ids;
  for (size_t i = 0; i < puts.size(); ++i) {
    if (!results[i].ok()) continue;
    stripe_ids.push_back(absl::Hash<BlockKey>{}(puts[i].key) % kStripes);
  }
  std::sort(stripe_ids.begin(), stripe_ids.end());
  stripe_ids.erase(std::unique(stripe_ids.begin(), stripe_ids.end()),
                   stripe_ids.end());
  for (size_t id : stripe_ids) stripes_[id].Lock();

  std::vector<EvictedBlock> evicted;
  // The puts this call writes to disk, and whether each is also in memory.
  std::vector<BlockPut> disk_puts;
  std::vector<size_t> disk_index;
  std::vector<bool> in_memory;
  absl::flat_hash_set<BlockKey> seen;
  absl::flat_hash_set<NamespaceId> claimed;
  for (size_t i = 0; i < puts.size(); ++i) {
    if (!results[i].ok()) continue;
    const BlockPut& put = puts[i];
    const BlockKey& key = put.key;
    const uint64_t size = put.block.size();
    if (!claimed.contains(key.ns)) {
      absl::Status s = ClaimNamespace(tenant, key.ns);
      if (!s.ok()) {
        results[i] = s;
        continue;
      }
      claimed.insert(key.ns);
    }
    // A key repeated in the batch is a duplicate of its first occurrence
    // (acknowledged with it, after the batch write).
    if (!seen.insert(key).second || memory_->Contains(key) ||
        FindPending(key) != nullptr) {
      duplicate_puts_.fetch_add(1);
      continue;
    }
    disk_->DropIfExpired(key);
    if (disk_->Contains(key)) {
      duplicate_puts_.fetch_add(1);
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      const uint64_t quota = QuotaForLocked(tenant);
      const uint64_t used = tenant_usage_[std::string(tenant)];
      if (quota != 0 && used + size > quota) {
        quota_rejections_.fetch_add(1);
        results[i] = absl::ResourceExhaustedError(
            absl::StrCat("tenant quota exceeded: ", used, " + ", size, " > ",
                         quota, " bytes"));
        continue;
      }
      ChargeLocked(key.ns, size);
    }
    auto bytes = std::make_shared<const std::string>(put.block);
    // Too large for memory (or its room leased): disk only.
    in_memory.push_back(
        memory_->PutShared(key, put.chain_position, bytes, &evicted).ok());
    disk_puts.push_back(put);
    disk_index.push_back(i);
  }

  if (!disk_puts.empty()) {
    std::vector<absl::Status> written = disk_->PutBatch(disk_puts);
    for (size_t j = 0; j < disk_puts.size(); ++j) {
      const absl::Status& s = written[j];
      const size_t i = disk_index[j];
      if (s.ok()) continue;
      NoteDiskFault(s, in_memory[j] ? "write-through put" : "put");
      // In async write-through a block held in memory is still stored; in
      // sync mode, or with no memory copy, the put fails.
      if (sync() || !in_memory[j]) {
        // A later block of the batch may have evicted it already.
        if (in_memory[j]) memory_->Delete(disk_puts[j].key).IgnoreError();
        ErasePending(disk_puts[j].key, nullptr);
        Uncharge(disk_puts[j].key.ns, disk_puts[j].block.size());
        results[i] = s;
      }
    }
  }
  for (auto it = stripe_ids.rbegin(); it != stripe_ids.rend(); ++it) {
    stripes_[*it].Unlock();
  }
  for (const absl::Status& s : results) {
    if (s.ok()) continue;
    puts_rejected_.fetch_add(1);
  }
  for (size_t j = 0; j < disk_puts.size(); ++j) {
    if (results[disk_index[j]].ok()) puts_.fetch_add(1);
  }
  HandleEvictions(evicted);
  return results;
}

absl::StatusOr<SharedBytes> TieredStore::Impl::GetBlock(
    absl::string_view tenant, const BlockKey& key) {
  if (!OwnedBy(tenant, key.ns)) {
    misses_.fetch_add(1);
    return absl::NotFoundError("block not found");
  }
  absl::StatusOr<SharedBytes> mem = memory_->Get(key);
  if (mem.ok()) {
    memory_hits_.fetch_add(1);
    return mem;
  }
  if (SharedBytes pending = FindPending(key)) {
    memory_hits_.fetch_add(1);
    return pending;
  }
  if (disk_ == nullptr) {
    misses_.fetch_add(1);
    return absl::NotFoundError("block not found");
  }
  absl::StatusOr<SharedBytes> got = disk_->Get(key);
  if (!got.ok()) {
    if (absl::IsNotFound(got.status())) {
      misses_.fetch_add(1);
      return absl::NotFoundError("block not found");
    }
    if (!absl::IsDataLoss(got.status())) {
      NoteDiskFault(got.status(), "get");
    }
    return got.status();
  }
  disk_hits_.fetch_add(1);
  std::vector<EvictedBlock> evicted;
  {
    absl::MutexLock stripe(&StripeFor(key));
    std::optional<RocksDbTier::RecordInfo> info = disk_->Stat(key);
    if (info.has_value() && !memory_->Contains(key) &&
        memory_->PutShared(key, info->chain_position, *got, &evicted).ok()) {
      promotions_.fetch_add(1);
    }
  }
  HandleEvictions(evicted);
  return got;
}

std::optional<std::vector<absl::StatusOr<SharedBytes>>>
TieredStore::Impl::GetBlocksFromMemory(absl::string_view tenant,
                                       const NamespaceId& ns,
                                       absl::Span<const BlockHash> hashes) {
  std::vector<absl::StatusOr<SharedBytes>> out;
  out.reserve(hashes.size());
  if (!OwnedBy(tenant, ns)) {
    misses_.fetch_add(hashes.size());
    out.assign(hashes.size(), absl::NotFoundError("block not found"));
    return out;
  }
  uint64_t hits = 0, misses = 0;
  for (const BlockHash& h : hashes) {
    const BlockKey key{ns, h};
    absl::StatusOr<SharedBytes> mem = memory_->Get(key);
    if (mem.ok()) {
      ++hits;
      out.push_back(*std::move(mem));
      continue;
    }
    if (SharedBytes pending = FindPending(key)) {
      ++hits;
      out.push_back(std::move(pending));
      continue;
    }
    if (disk_ != nullptr && disk_->Contains(key)) return std::nullopt;
    ++misses;
    out.push_back(absl::NotFoundError("block not found"));
  }
  memory_hits_.fetch_add(hits);
  misses_.fetch_add(misses);
  return out;
}

bool TieredStore::Impl::PutMayTouchDisk(uint64_t bytes) const {
  if (disk_ == nullptr) return false;
  if (write_through()) return true;
  // Shards fill unevenly; within 1/8 of the budget some shard may be full.
  const uint64_t cap = options_.memory_bytes;
  return memory_->approximate_bytes() + bytes > cap - cap / 8;
}

LookupResult TieredStore::Impl::Lookup(absl::string_view tenant,
                                       const NamespaceId& ns,
                                       absl::Span<const BlockHash> hashes,
                                       absl::Duration lease) {
  LookupResult result;
  result.present.assign(hashes.size(), false);
  if (hashes.empty() || !OwnedBy(tenant, ns)) return result;
  std::vector<BlockKey> keys;
  keys.reserve(hashes.size());
  for (const BlockHash& h : hashes) keys.push_back(BlockKey{ns, h});
  std::vector<bool> in_memory = memory_->Contains(keys);
  std::vector<BlockKey> rest;
  std::vector<size_t> rest_index;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (in_memory[i] || FindPending(keys[i]) != nullptr) {
      result.present[i] = true;
    } else {
      rest.push_back(keys[i]);
      rest_index.push_back(i);
    }
  }
  if (disk_ != nullptr && !rest.empty()) {
    std::vector<bool> on_disk = disk_->Contains(rest);
    for (size_t j = 0; j < rest.size(); ++j) {
      if (on_disk[j]) result.present[rest_index[j]] = true;
    }
  }
  while (result.prefix_blocks < static_cast<int64_t>(hashes.size()) &&
         result.present[result.prefix_blocks]) {
    ++result.prefix_blocks;
  }
  if (lease <= absl::ZeroDuration() || result.prefix_blocks == 0) {
    return result;
  }
  // Lease first, then check again that each leased block is still held:
  // memory eviction checks the lease and removes a block under one lock, so
  // a block found held after its lease was granted stays until the lease
  // ends (the disk tier has a short gap, see the header comment).
  const absl::Time until = leases_->Now() + lease;
  int64_t leased = 0;
  while (leased < result.prefix_blocks && leases_->Lease(keys[leased], until)) {
    ++leased;
  }
  for (int64_t i = 0; i < leased; ++i) {
    if (!Held(keys[i])) {
      // Evicted between the first check and its lease: the prefix ends
      // here. (The lease just granted on it ends on its own.)
      result.present[i] = false;
      result.prefix_blocks = i;
      break;
    }
  }
  return result;
}

absl::Status TieredStore::Impl::DeleteBlock(absl::string_view tenant,
                                            const BlockKey& key) {
  if (!OwnedBy(tenant, key.ns)) {
    return absl::NotFoundError("block not found");
  }
  absl::MutexLock stripe(&StripeFor(key));
  leases_->Release(key);
  uint64_t in_memory = memory_->Delete(key).value_or(0);
  if (SharedBytes pending = ErasePending(key, nullptr)) {
    in_memory = std::max<uint64_t>(in_memory, pending->size());
  }
  uint64_t on_disk = 0;
  if (disk_ != nullptr) {
    absl::StatusOr<uint64_t> d = disk_->Delete(key);
    if (!d.ok()) {
      NoteDiskFault(d.status(), "delete");
      return d.status();
    }
    on_disk = *d;
  }
  const uint64_t size = std::max(in_memory, on_disk);
  if (size == 0) return absl::NotFoundError("block not found");
  Uncharge(key.ns, size);
  return absl::OkStatus();
}

absl::StatusOr<NamespaceInfo> TieredStore::Impl::DeleteNamespace(
    absl::string_view tenant, const NamespaceId& ns) {
  if (!OwnedBy(tenant, ns)) {
    return absl::NotFoundError("namespace not found");
  }
  leases_->ReleaseNamespace(ns);
  memory_->DeleteNamespace(ns).IgnoreError();
  {
    absl::MutexLock lock(&pending_mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->first.ns == ns) {
        pending_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  if (disk_ != nullptr) {
    absl::StatusOr<TierUsage> d = disk_->DeleteNamespace(ns);
    absl::Status s = d.status();
    if (s.ok()) s = disk_->DeleteNamespaceOwner(ns);
    if (!s.ok()) {
      NoteDiskFault(s, "delete namespace");
      return s;
    }
  }
  absl::MutexLock lock(&mu_);
  NamespaceInfo info;
  auto it = namespaces_.find(ns);
  if (it != namespaces_.end()) {
    info =
        NamespaceInfo{it->second.tenant, it->second.bytes, it->second.blocks};
    if (it->second.owned) {
      uint64_t& usage = tenant_usage_[it->second.tenant];
      usage -= std::min(usage, it->second.bytes);
    }
    namespaces_.erase(it);
  }
  return info;
}

absl::StatusOr<NamespaceInfo> TieredStore::Impl::GetNamespaceInfo(
    const NamespaceId& ns) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end() || !it->second.owned) {
    return absl::NotFoundError("namespace not found");
  }
  return NamespaceInfo{it->second.tenant, it->second.bytes, it->second.blocks};
}

void TieredStore::Impl::CacheCodebookLocked(uint64_t hash, SharedBytes bytes) {
  if (codebook_cache_.contains(hash)) return;
  const uint64_t size = bytes->size();
  if (disk_ != nullptr) {
    if (size > options_.codebook_cache_bytes) return;
    while (codebook_cache_bytes_ + size > options_.codebook_cache_bytes &&
           !codebook_cache_.empty()) {
      auto victim = codebook_cache_.begin();
      codebook_cache_bytes_ -= victim->second->size();
      codebook_cache_.erase(victim);
    }
  }
  codebook_cache_bytes_ += size;
  codebook_cache_.emplace(hash, std::move(bytes));
}

absl::Status TieredStore::Impl::PutCodebooks(uint64_t hash,
                                             absl::string_view bytes) {
  if (hash == 0) {
    return absl::InvalidArgumentError("codebook hash 0 is reserved for none");
  }
  if (bytes.empty()) return absl::InvalidArgumentError("empty codebook file");
  if (HasCodebook(hash)) return absl::OkStatus();
  if (disk_ != nullptr) {
    absl::Status s = disk_->PutCodebook(hash, bytes);
    if (!s.ok()) {
      NoteDiskFault(s, "put codebook");
      return s;
    }
  }
  auto shared = std::make_shared<const std::string>(bytes);
  absl::MutexLock lock(&mu_);
  codebooks_.insert(hash);
  CacheCodebookLocked(hash, std::move(shared));
  return absl::OkStatus();
}

absl::StatusOr<SharedBytes> TieredStore::Impl::GetCodebooks(uint64_t hash) {
  {
    absl::ReaderMutexLock lock(&mu_);
    if (!codebooks_.contains(hash)) {
      return absl::NotFoundError(
          absl::StrCat("codebook set ", absl::Hex(hash), " not registered"));
    }
    auto it = codebook_cache_.find(hash);
    if (it != codebook_cache_.end()) return it->second;
  }
  if (disk_ == nullptr) return absl::NotFoundError("codebook set not found");
  absl::StatusOr<SharedBytes> got = disk_->GetCodebook(hash);
  if (!got.ok()) {
    if (!absl::IsNotFound(got.status())) {
      NoteDiskFault(got.status(), "get codebook");
    }
    return got.status();
  }
  absl::MutexLock lock(&mu_);
  CacheCodebookLocked(hash, *got);
  return got;
}

bool TieredStore::Impl::HasCodebook(uint64_t hash) const {
  absl::ReaderMutexLock lock(&mu_);
  return codebooks_.contains(hash);
}

void TieredStore::Impl::SetTenantQuota(absl::string_view tenant,
                                       uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  quotas_[std::string(tenant)] = bytes;
}

uint64_t TieredStore::Impl::TenantUsage(absl::string_view tenant) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = tenant_usage_.find(tenant);
  return it == tenant_usage_.end() ? 0 : it->second;
}

absl::Status TieredStore::Impl::Flush() {
  if (disk_ == nullptr) return absl::OkStatus();
  absl::Status first;
  std::vector<EvictedBlock> blocks = memory_->Snapshot();
  // Snapshot lists each shard most recent first; write least recent first
  // so the most recent blocks are the newest on disk.
  std::reverse(blocks.begin(), blocks.end());
  for (const EvictedBlock& b : blocks) {
    absl::MutexLock stripe(&StripeFor(b.key));
    if (disk_->Contains(b.key) || !memory_->Contains(b.key)) continue;
    absl::Status s = disk_->Put(b.key, b.chain_position, *b.bytes);
    if (s.ok()) {
      spills_.fetch_add(1);
    } else {
      NoteDiskFault(s, "flush");
      if (first.ok()) first = s;
    }
  }
  absl::Status s = disk_->Flush();
  if (!s.ok()) {
    NoteDiskFault(s, "flush");
    if (first.ok()) first = s;
  }
  return first;
}

StoreStats TieredStore::Impl::Stats() const {
  StoreStats s;
  s.memory = memory_->Usage();
  s.has_disk = disk_ != nullptr;
  if (disk_ != nullptr) {
    s.disk = disk_->Usage();
    s.expired = disk_->expired();
    s.corrupt_dropped = disk_->corrupt_dropped();
  }
  s.puts = puts_.load();
  s.duplicate_puts = duplicate_puts_.load();
  s.puts_rejected = puts_rejected_.load();
  s.quota_rejections = quota_rejections_.load();
  s.memory_hits = memory_hits_.load();
  s.disk_hits = disk_hits_.load();
  s.misses = misses_.load();
  s.memory_evictions = memory_->evictions();
  s.spills = spills_.load();
  s.dropped = dropped_.load();
  s.promotions = promotions_.load();
  s.leases = leases_->size();
  s.disk_faults = disk_faults_.load();
  s.disk_fault = s.disk_faults > 0;
  {
    absl::MutexLock lock(&fault_mu_);
    s.last_disk_error = last_disk_error_;
  }
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [ns, state] : namespaces_) {
    if (state.owned) ++s.namespaces;
  }
  s.codebooks = codebooks_.size();
  return s;
}

// --- TieredStore --------------------------------------------------------

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Open(
    TieredStoreOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  if (absl::Status s = impl->Init(); !s.ok()) return s;
  return std::unique_ptr<TieredStore>(new TieredStore(std::move(impl)));
}

TieredStore::TieredStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TieredStore::~TieredStore() = default;

absl::Status TieredStore::PutBlock(absl::string_view tenant,
                                   const BlockPut& put) {
  return impl_->PutBlock(tenant, put);
}

std::vector<absl::Status> TieredStore::PutBlocks(
    absl::string_view tenant, absl::Span<const BlockPut> puts) {
  return impl_->PutBlocks(tenant, puts);
}

absl::StatusOr<SharedBytes> TieredStore::GetBlock(absl::string_view tenant,
                                                  const BlockKey& key) {
  return impl_->GetBlock(tenant, key);
}

std::vector<absl::StatusOr<SharedBytes>> TieredStore::GetBlocks(
    absl::string_view tenant, const NamespaceId& ns,
    absl::Span<const BlockHash> hashes) {
  std::vector<absl::StatusOr<SharedBytes>> out;
  out.reserve(hashes.size());
  for (const BlockHash& h : hashes) {
    out.push_back(impl_->GetBlock(tenant, BlockKey{ns, h}));
  }
  return out;
}

std::optional<std::vector<absl::StatusOr<SharedBytes>>>
TieredStore::GetBlocksFromMemory(absl::string_view tenant,
                                 const NamespaceId& ns,
                                 absl::Span<const BlockHash> hashes) {
  return impl_->GetBlocksFromMemory(tenant, ns, hashes);
}

bool TieredStore::PutMayTouchDisk(uint64_t bytes) const {
  return impl_->PutMayTouchDisk(bytes);
}

LookupResult TieredStore::Lookup(absl::string_view tenant,
                                 const NamespaceId& ns,
                                 absl::Span<const BlockHash> hashes,
                                 absl::Duration lease) {
  return impl_->Lookup(tenant, ns, hashes, lease);
}

absl::Status TieredStore::DeleteBlock(absl::string_view tenant,
                                      const BlockKey& key) {
  return impl_->DeleteBlock(tenant, key);
}

absl::StatusOr<NamespaceInfo> TieredStore::DeleteNamespace(
    absl::string_view tenant, const NamespaceId& ns) {
  return impl_->DeleteNamespace(tenant, ns);
}

absl::StatusOr<NamespaceInfo> TieredStore::GetNamespaceInfo(
    const NamespaceId& ns) const {
  return impl_->GetNamespaceInfo(ns);
}

absl::Status TieredStore::PutCodebooks(uint64_t hash, absl::string_view bytes) {
  return impl_->PutCodebooks(hash, bytes);
}

absl::StatusOr<SharedBytes> TieredStore::GetCodebooks(uint64_t hash) {
  return impl_->GetCodebooks(hash);
}

bool TieredStore::HasCodebook(uint64_t hash) const {
  return impl_->HasCodebook(hash);
}

void TieredStore::SetTenantQuota(absl::string_view tenant, uint64_t bytes) {
  impl_->SetTenantQuota(tenant, bytes);
}

uint64_t TieredStore::TenantUsage(absl::string_view tenant) const {
  return impl_->TenantUsage(tenant);
}

absl::Status TieredStore::Flush() { return impl_->Flush(); }

uint64_t TieredStore::SweepExpired() { return impl_->SweepExpired(); }

StoreStats TieredStore::Stats() const { return impl_->Stats(); }

const TieredStoreOptions& TieredStore::options() const {
  return impl_->options();
}

}  // namespace vqkv::storage
