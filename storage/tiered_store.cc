#include "storage/tiered_store.h"

#include <algorithm>
#include <array>
#include <atomic>
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
#include "base/logging.h"
#include "base/status_macros.h"
#include "kernels/block.h"
#include "storage/codebook_registry.h"
#include "storage/lease_table.h"
#include "storage/memory_tier.h"
#include "storage/namespace_ledger.h"
#include "storage/rocksdb_tier.h"

namespace vqkv::storage {

uint64_t DiskMaxRecordsFor(uint64_t memory_bytes) {
  return std::max<uint64_t>(4096, memory_bytes / 4 / kIndexBytesPerRecord);
}

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

// The store places blocks in its tiers; the namespace ledger
// (storage/namespace_ledger.h) keeps owners, usage and quotas, the codebook
// registry (storage/codebook_registry.h) the codebook files.
//
// Locking: a put, promotion, delete or spill of key K holds stripe(K) while
// it checks and changes where K lives, so the ledger counts each block
// exactly once; DeleteNamespace holds every stripe. The ledger's and the
// registry's locks are leaves, held only for short in-memory work; no store
// lock but the stripes (and owner_mu_, for owner records) is held while
// calling into a tier that could call back.
//
// Disk drops (budget eviction, TTL, corruption) are reported by the disk
// tier on whatever thread caused them, possibly one holding stripes. They
// are queued (OnDiskDrop) and settled under the dropped key's stripe
// (SettleDropLocked): the block left the store, and is uncharged, only if
// neither memory, nor a pending spill, nor a newer disk record holds it
// then. Every path that could charge K again (a put) or store K elsewhere
// (spill, promotion) settles K's queued drop first, under stripe(K), so a
// drop that races a memory eviction is never uncharged while its spill
// brings the block back, and a block put again after its drop is never
// charged twice.
class TieredStore::Impl {
 public:
  explicit Impl(TieredStoreOptions options)
      : options_(std::move(options)),
        ledger_(options_.default_tenant_quota, options_.tenant_quotas,
                options_.max_namespaces_per_tenant) {
    if (options_.durability == Durability::kSync) {
      options_.write_policy = WritePolicy::kWriteThrough;
    }
  }

  absl::Status Init();

  absl::Status PutBlock(absl::string_view tenant, const BlockPut& put,
                        DuplicatePut duplicate) {
    return Put(tenant, absl::MakeConstSpan(&put, 1), duplicate)[0];
  }
  std::vector<absl::Status> PutBlocks(absl::string_view tenant,
                                      absl::Span<const BlockPut> puts,
                                      DuplicatePut duplicate);
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
  absl::StatusOr<NamespaceInfo> GetNamespaceInfo(const NamespaceId& ns) {
    SettleDrops();
    return ledger_.Info(ns);
  }
  // Settles every queued disk drop. REQUIRES: no stripe lock held.
  void SettleDrops();

  CodebookRegistry& codebooks() { return *codebooks_; }
  const CodebookRegistry& codebooks() const { return *codebooks_; }
  NamespaceLedger& ledger() { return ledger_; }
  const NamespaceLedger& ledger() const { return ledger_; }

  absl::Status Flush();
  uint64_t SweepExpired() {
    const uint64_t n = disk_ ? disk_->SweepExpired() : 0;
    SettleDrops();
    return n;
  }
  StoreStats Stats() const;
  const TieredStoreOptions& options() const { return options_; }

 private:
  static constexpr size_t kStripes = 64;
  class StripeLocks;
  class AllStripesLock;
  // A put that passed admission: charged to its tenant, and held in memory
  // when `memory` is OK (else memory refused it: too large, or its room is
  // held by leased blocks).
  struct Admitted {
    size_t index;  // into the puts
    absl::Status memory;
  };

  static size_t StripeIndex(const BlockKey& key) {
    return absl::Hash<BlockKey>{}(key) % kStripes;
  }
  absl::Mutex& StripeFor(const BlockKey& key) {
    return stripes_[StripeIndex(key)];
  }
  // Init's disk part: creates data_dir and opens the RocksDB tier.
  absl::Status OpenDisk();
  // Verification and the codebook check of a put (no locks needed).
  absl::Status CheckBlock(const BlockPut& put) const;
  // Writes (or deletes) the owner record of `ns` as the ledger has it now;
  // a failure leaves `ns` dirty, to be written again by the next put into
  // it and by Flush. Returns the disk's status.
  absl::Status SyncOwner(const NamespaceId& ns);
  bool OwnerDirty(const NamespaceId& ns);
  // Settles the queued drop of `key`, if any (see the comment above Impl).
  // REQUIRES: stripe(key).
  void SettleDropLocked(const BlockKey& key);
  // Whether a disk record, a pending spill or memory holds `key` (an expired
  // disk record counts: its own drop is still to come).
  bool HeldForSettle(const BlockKey& key) {
    return memory_->Contains(key) || FindPending(key) != nullptr ||
           (disk_ != nullptr && disk_->HasRecord(key));
  }
  // `key`'s copy in memory or pending is gone: uncharge it, unless a disk
  // record of it remains (its own drop will). REQUIRES: stripe(key).
  void ReleaseChargeLocked(const BlockKey& key, uint64_t bytes);
  // Whether a disk record written at `written_micros` (0: now) is past the
  // TTL now.
  bool ExpiredForSpill(int64_t written_micros) const;
  // The one admission path, for PutBlock and PutBlocks: verifies each put,
  // locks the stripes of all its keys, admits each (namespace, duplicate,
  // quota, memory), then writes the admitted blocks that go to disk in one
  // RocksDB write batch (one fsync in sync mode). One status per put.
  std::vector<absl::Status> Put(absl::string_view tenant,
                                absl::Span<const BlockPut> puts,
                                DuplicatePut duplicate);
  // Admission of the puts whose results are OK; sets results[i] for those
  // refused. REQUIRES: the stripes of their keys.
  std::vector<Admitted> Admit(absl::string_view tenant,
                              absl::Span<const BlockPut> puts,
                              DuplicatePut duplicate,
                              std::vector<absl::Status>& results,
                              std::vector<EvictedBlock>& evicted);
  // Writes to disk the admitted blocks that go there (all with
  // write-through, else those memory refused); undoes and fails the puts
  // that end up stored nowhere (or, in sync mode, not on disk).
  // REQUIRES: the stripes of their keys.
  void StoreOnDisk(absl::Span<const BlockPut> puts,
                   absl::Span<const Admitted> admitted,
                   std::vector<absl::Status>& results);
  // Whether a put of `key` is a duplicate: held in memory, being spilled,
  // or on disk (an expired disk record is dropped first, to be replaced).
  bool HeldForPut(const BlockKey& key);
  // Takes care of blocks the memory tier evicted: spill to disk, or drop
  // them from the ledger. REQUIRES: no stripe lock held.
  void HandleEvictions(std::vector<EvictedBlock>& evicted);
  void OnDiskDrop(const DroppedBlock& drop);
  void NoteDiskFault(const absl::Status& status, absl::string_view what);
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
  NamespaceLedger ledger_;
  std::unique_ptr<CodebookRegistry> codebooks_;  // set by Init

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

  // Disk drops not yet settled: key -> bytes of the dropped record.
  absl::Mutex drops_mu_;
  absl::flat_hash_map<BlockKey, uint64_t> queued_drops_
      ABSL_GUARDED_BY(drops_mu_);

  // Owner records to write again (their last write failed). Held across
  // the owner record's disk write, so records reach the disk in the order
  // of the ledger changes they reflect.
  absl::Mutex owner_mu_;
  absl::flat_hash_set<NamespaceId> dirty_owners_ ABSL_GUARDED_BY(owner_mu_);
  std::atomic<uint64_t> dirty_owner_count_{0};

  mutable absl::Mutex fault_mu_;
  std::string last_disk_error_ ABSL_GUARDED_BY(fault_mu_);
  bool fault_logged_ ABSL_GUARDED_BY(fault_mu_) = false;

  std::atomic<uint64_t> puts_{0}, duplicate_puts_{0}, puts_rejected_{0},
      quota_rejections_{0}, memory_hits_{0}, disk_hits_{0}, misses_{0},
      spills_{0}, dropped_{0}, promotions_{0}, disk_faults_{0},
      expired_on_spill_{0};
};

// Locks the stripes of `keys` in ascending order (no other path holds two
// stripes, so this cannot deadlock) until destroyed.
class TieredStore::Impl::StripeLocks {
 public:
  StripeLocks(Impl& store, absl::Span<const BlockPut> puts,
              const std::vector<absl::Status>& results)
      : store_(store) {
    for (size_t i = 0; i < puts.size(); ++i) {
      if (results[i].ok()) ids_.push_back(StripeIndex(puts[i].key));
    }
    std::sort(ids_.begin(), ids_.end());
    ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
    for (size_t id : ids_) store_.stripes_[id].Lock();
  }
  ~StripeLocks() {
    for (auto it = ids_.rbegin(); it != ids_.rend(); ++it) {
      store_.stripes_[*it].Unlock();
    }
  }
  StripeLocks(const StripeLocks&) = delete;
  StripeLocks& operator=(const StripeLocks&) = delete;

 private:
  Impl& store_;
  std::vector<size_t> ids_;
};

// Locks every stripe, in ascending order, until destroyed.
class TieredStore::Impl::AllStripesLock {
 public:
  explicit AllStripesLock(Impl& store) : store_(store) {
    for (absl::Mutex& m : store_.stripes_) m.Lock();
  }
  ~AllStripesLock() {
    for (auto it = store_.stripes_.rbegin(); it != store_.stripes_.rend();
         ++it) {
      it->Unlock();
    }
  }
  AllStripesLock(const AllStripesLock&) = delete;
  AllStripesLock& operator=(const AllStripesLock&) = delete;

 private:
  Impl& store_;
};

absl::Status TieredStore::Impl::Init() {
  if (options_.memory_bytes == 0) {
    return absl::InvalidArgumentError("memory_bytes must be positive");
  }
  if (options_.memory_shards < 1) {
    return absl::InvalidArgumentError("memory_shards must be at least 1");
  }
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
  if (!options_.data_dir.empty()) {
    VQKV_RETURN_IF_ERROR(OpenDisk());
    ledger_.Load(disk_->Namespaces());
  }
  CodebookRegistryOptions registry;
  registry.disk = disk_.get();
  registry.cache_bytes = options_.codebook_cache_bytes;
  registry.quota = options_.codebook_quota;
  registry.verify =
      options_.codebook_verifier
          ? options_.codebook_verifier
          : std::function<absl::Status(uint64_t, absl::string_view)>(
                VerifyCodebookFile);
  registry.on_disk_fault = [this](const absl::Status& s,
                                  absl::string_view what) {
    NoteDiskFault(s, what);
  };
  codebooks_ = std::make_unique<CodebookRegistry>(std::move(registry));
  return absl::OkStatus();
}

absl::Status TieredStore::Impl::OpenDisk() {
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
  disk.max_records = options_.disk_max_records != 0
                         ? options_.disk_max_records
                         : DiskMaxRecordsFor(options_.memory_bytes);
  disk.sync_writes = sync();
  disk.ttl = options_.ttl;
  disk.clock = options_.clock;
  disk.file_system = options_.file_system;
  // Queued as the record leaves the index (see the comment above Impl).
  disk.on_drop_committed = [this](const DroppedBlock& d) { OnDiskDrop(d); };
  disk.leases = leases_;
  VQKV_ASSIGN_OR_RETURN(disk_, RocksDbTier::Open(std::move(disk)));
  return absl::OkStatus();
}

void TieredStore::Impl::NoteDiskFault(const absl::Status& status,
                                      absl::string_view what) {
  disk_faults_.fetch_add(1);
  const std::string error = absl::StrCat(what, ": ", status.ToString());
  bool first = false;
  {
    absl::MutexLock lock(&fault_mu_);
    last_disk_error_ = error;
    first = !std::exchange(fault_logged_, true);
  }
  if (first) {
    VQKV_LOG(kWarning) << "disk tier fault (first occurrence; serving from "
                          "memory, further faults counted in stats): "
                       << error;
  }
}

void TieredStore::Impl::OnDiskDrop(const DroppedBlock& drop) {
  if (drop.reason == DropReason::kEvicted) dropped_.fetch_add(1);
  // Settled later, under the key's stripe (this thread may hold stripes).
  absl::MutexLock lock(&drops_mu_);
  queued_drops_[drop.key] = drop.bytes;
}

void TieredStore::Impl::SettleDropLocked(const BlockKey& key) {
  uint64_t bytes = 0;
  {
    absl::MutexLock lock(&drops_mu_);
    auto it = queued_drops_.find(key);
    if (it == queued_drops_.end()) return;
    bytes = it->second;
    queued_drops_.erase(it);
  }
  // Still held (memory, a pending spill, a newer disk record): the one
  // charge stays with that copy.
  if (!HeldForSettle(key)) ledger_.Uncharge(key.ns, bytes);
}

void TieredStore::Impl::SettleDrops() {
  std::vector<BlockKey> keys;
  {
    absl::MutexLock lock(&drops_mu_);
    if (queued_drops_.empty()) return;
    keys.reserve(queued_drops_.size());
    for (const auto& [key, bytes] : queued_drops_) keys.push_back(key);
  }
  for (const BlockKey& key : keys) {
    absl::MutexLock stripe(&StripeFor(key));
    SettleDropLocked(key);
  }
}

bool TieredStore::Impl::ExpiredForSpill(int64_t written_micros) const {
  if (written_micros == 0 || options_.ttl <= absl::ZeroDuration()) {
    return false;
  }
  const absl::Time now = options_.clock ? options_.clock() : absl::Now();
  return now - absl::FromUnixMicros(written_micros) >= options_.ttl;
}

void TieredStore::Impl::HandleEvictions(std::vector<EvictedBlock>& evicted) {
  for (EvictedBlock& e : evicted) {
    absl::MutexLock stripe(&StripeFor(e.key));
    SettleDropLocked(e.key);
    if (disk_ == nullptr) {
      if (!memory_->Contains(e.key)) dropped_.fetch_add(1);
      ledger_.Uncharge(e.key.ns, e.bytes->size());
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
    if (ExpiredForSpill(e.written_micros)) {
      // Promoted from a disk record that is now past the TTL: the TTL
      // counts from that first write, so the block expires instead of
      // being written again.
      expired_on_spill_.fetch_add(1);
      ErasePending(e.key, e.bytes);
      ReleaseChargeLocked(e.key, e.bytes->size());
      continue;
    }
    if (options_.before_spill_write) options_.before_spill_write(e.key);
    const BlockPut put{e.key, e.chain_position, *e.bytes, e.written_micros};
    absl::Status s = disk_->PutBatch(absl::MakeConstSpan(&put, 1))[0];
    if (s.ok()) {
      spills_.fetch_add(1);
    } else {
      NoteDiskFault(s, "spill");
      dropped_.fetch_add(1);
      ErasePending(e.key, e.bytes);
      ReleaseChargeLocked(e.key, e.bytes->size());
      continue;
    }
    ErasePending(e.key, e.bytes);
  }
  evicted.clear();
}

void TieredStore::Impl::ReleaseChargeLocked(const BlockKey& key,
                                            uint64_t bytes) {
  // A record still indexed: its drop, queued when it leaves the index, is
  // settled later and uncharges then. Checked first: a record that left the
  // index before this check had its drop queued already (atomically).
  if (disk_ != nullptr && disk_->HasRecord(key)) return;
  bool queued = false;
  {
    absl::MutexLock lock(&drops_mu_);
    queued = queued_drops_.contains(key);
  }
  if (queued) {
    SettleDropLocked(key);  // nothing holds it now: uncharges once
  } else {
    ledger_.Uncharge(key.ns, bytes);
  }
}

absl::Status TieredStore::Impl::CheckBlock(const BlockPut& put) const {
  const auto* data = reinterpret_cast<const uint8_t*>(put.block.data());
  VQKV_ASSIGN_OR_RETURN(const BlockHeader header,
                        VerifyBlock(data, put.block.size()));
  if (header.codebook_hash != 0 && !codebooks_->Has(header.codebook_hash)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "block refers to codebook set ", absl::Hex(header.codebook_hash),
        ", which is not registered (PutCodebooks first)"));
  }
  return absl::OkStatus();
}

absl::Status TieredStore::Impl::SyncOwner(const NamespaceId& ns) {
  if (disk_ == nullptr) return absl::OkStatus();
  absl::MutexLock lock(&owner_mu_);
  absl::StatusOr<NamespaceInfo> info = ledger_.Info(ns);
  absl::Status s = info.ok() ? disk_->PutNamespaceOwner(ns, info->tenant)
                             : disk_->DeleteNamespaceOwner(ns);
  if (s.ok()) {
    if (dirty_owners_.erase(ns) > 0) dirty_owner_count_.fetch_sub(1);
  } else {
    NoteDiskFault(s, "namespace owner");
    if (dirty_owners_.insert(ns).second) dirty_owner_count_.fetch_add(1);
  }
  return s;
}

bool TieredStore::Impl::OwnerDirty(const NamespaceId& ns) {
  if (dirty_owner_count_.load() == 0) return false;
  absl::MutexLock lock(&owner_mu_);
  return dirty_owners_.contains(ns);
}

std::vector<absl::Status> TieredStore::Impl::PutBlocks(
    absl::string_view tenant, absl::Span<const BlockPut> puts,
    DuplicatePut duplicate) {
  // With write-through the batch shares one disk write; otherwise each put
  // holds only its own stripe.
  if (puts.size() > 1 && write_through() && disk_ != nullptr) {
    return Put(tenant, puts, duplicate);
  }
  std::vector<absl::Status> out;
  out.reserve(puts.size());
  for (const BlockPut& p : puts) out.push_back(PutBlock(tenant, p, duplicate));
  return out;
}

std::vector<absl::Status> TieredStore::Impl::Put(
    absl::string_view tenant, absl::Span<const BlockPut> puts,
    DuplicatePut duplicate) {
  std::vector<absl::Status> results(puts.size());
  for (size_t i = 0; i < puts.size(); ++i) results[i] = CheckBlock(puts[i]);
  std::vector<EvictedBlock> evicted;
  uint64_t stored = 0;
  {
    // Held until the blocks are on disk: a concurrent put of the same key
    // waits, so it is never acknowledged before the block is durable, and a
    // concurrent delete cannot slip between memory and disk.
    StripeLocks stripes(*this, puts, results);
    const std::vector<Admitted> admitted =
        Admit(tenant, puts, duplicate, results, evicted);
    StoreOnDisk(puts, admitted, results);
    for (const Admitted& a : admitted) {
      if (results[a.index].ok()) ++stored;
    }
  }
  puts_.fetch_add(stored);
  for (const absl::Status& s : results) {
    if (!s.ok()) puts_rejected_.fetch_add(1);
  }
  HandleEvictions(evicted);
  SettleDrops();
  return results;
}

std::vector<TieredStore::Impl::Admitted> TieredStore::Impl::Admit(
    absl::string_view tenant, absl::Span<const BlockPut> puts,
    DuplicatePut duplicate, std::vector<absl::Status>& results,
    std::vector<EvictedBlock>& evicted) {
  std::vector<Admitted> admitted;
  absl::flat_hash_set<BlockKey> seen;
  for (size_t i = 0; i < puts.size(); ++i) {
    if (!results[i].ok()) continue;
    const BlockPut& put = puts[i];
    const NamespaceId& ns = put.key.ns;
    // A key repeated in the batch is a duplicate of its first occurrence
    // (acknowledged with it).
    const bool repeated = !seen.insert(put.key).second;
    const bool held = repeated || HeldForPut(put.key);
    // A queued drop of this key is settled before it can be charged again.
    if (!repeated) SettleDropLocked(put.key);
    // Ownership, the quota, the namespace bound and the charge in one step:
    // nothing is claimed for a put the quota refuses.
    absl::StatusOr<NamespaceLedger::Admission> admission =
        ledger_.Admit(tenant, ns, held ? 0 : put.block.size(), !held);
    if (!admission.ok()) {
      results[i] = admission.status();
      if (absl::IsResourceExhausted(results[i])) quota_rejections_.fetch_add(1);
      continue;
    }
    for (const NamespaceId& gone : admission->reclaimed) {
      SyncOwner(gone).IgnoreError();  // dirty on failure, retried
    }
    if (admission->claimed || OwnerDirty(ns)) {
      absl::Status owner = SyncOwner(ns);
      if (!owner.ok() && sync()) {
        // Sync promises the block is readable after a crash, which takes
        // its owner record.
        if (!held) ledger_.Uncharge(ns, put.block.size());
        results[i] = owner;
        continue;
      }
    }
    if (held) {
      duplicate_puts_.fetch_add(1);
      if (duplicate == DuplicatePut::kAlreadyExists) {
        results[i] = absl::AlreadyExistsError(
            "a block with this hash is already stored; kept the stored copy");
      }
      continue;
    }
    auto bytes = std::make_shared<const std::string>(put.block);
    admitted.push_back(Admitted{
        i, memory_->PutShared(put.key, put.chain_position, bytes, &evicted)});
  }
  return admitted;
}

bool TieredStore::Impl::HeldForPut(const BlockKey& key) {
  if (memory_->Contains(key) || FindPending(key) != nullptr) return true;
  if (disk_ == nullptr) return false;
  disk_->DropIfExpired(key);
  return disk_->Contains(key);
}

void TieredStore::Impl::StoreOnDisk(absl::Span<const BlockPut> puts,
                                    absl::Span<const Admitted> admitted,
                                    std::vector<absl::Status>& results) {
  std::vector<BlockPut> disk_puts;
  std::vector<const Admitted*> disk_admitted;
  for (const Admitted& a : admitted) {
    const BlockPut& put = puts[a.index];
    if (disk_ != nullptr && (write_through() || !a.memory.ok())) {
      disk_puts.push_back(put);
      disk_admitted.push_back(&a);
    } else if (!a.memory.ok()) {
      ledger_.Uncharge(put.key.ns, put.block.size());
      results[a.index] = a.memory;
    }
  }
  if (disk_puts.empty()) return;
  const std::vector<absl::Status> written = disk_->PutBatch(disk_puts);
  for (size_t j = 0; j < disk_puts.size(); ++j) {
    if (written[j].ok()) continue;
    const bool in_memory = disk_admitted[j]->memory.ok();
    NoteDiskFault(written[j], in_memory ? "write-through put" : "put");
    // In async write-through a block held in memory is still stored; in
    // sync mode, or with no memory copy, the put fails.
    if (in_memory && !sync()) continue;
    const BlockPut& put = disk_puts[j];
    // A later block of the batch may have evicted it already.
    if (in_memory) memory_->Delete(put.key).IgnoreError();
    ErasePending(put.key, nullptr);
    ledger_.Uncharge(put.key.ns, put.block.size());
    results[disk_admitted[j]->index] = written[j];
  }
}
absl::StatusOr<SharedBytes> TieredStore::Impl::GetBlock(
    absl::string_view tenant, const BlockKey& key) {
  if (!ledger_.OwnedBy(tenant, key.ns)) {
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
    SettleDrops();  // an expired or corrupt record was dropped
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
    SettleDropLocked(key);
    std::optional<RocksDbTier::RecordInfo> info = disk_->Stat(key);
    // The copy keeps the record's write time, for the TTL of a re-spill.
    if (info.has_value() && !memory_->Contains(key) &&
        memory_
            ->PutShared(key, info->chain_position, *got, &evicted,
                        absl::ToUnixMicros(info->write_time))
            .ok()) {
      promotions_.fetch_add(1);
    }
  }
  HandleEvictions(evicted);
  SettleDrops();
  return got;
}

std::optional<std::vector<absl::StatusOr<SharedBytes>>>
TieredStore::Impl::GetBlocksFromMemory(absl::string_view tenant,
                                       const NamespaceId& ns,
                                       absl::Span<const BlockHash> hashes) {
  std::vector<absl::StatusOr<SharedBytes>> out;
  out.reserve(hashes.size());
  if (!ledger_.OwnedBy(tenant, ns)) {
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
  if (hashes.empty() || !ledger_.OwnedBy(tenant, ns)) return result;
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
  if (!ledger_.OwnedBy(tenant, key.ns)) {
    return absl::NotFoundError("block not found");
  }
  absl::MutexLock stripe(&StripeFor(key));
  SettleDropLocked(key);
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
  ledger_.Uncharge(key.ns, size);
  return absl::OkStatus();
}

absl::StatusOr<NamespaceInfo> TieredStore::Impl::DeleteNamespace(
    absl::string_view tenant, const NamespaceId& ns) {
  if (!ledger_.OwnedBy(tenant, ns)) {
    return absl::NotFoundError("namespace not found");
  }
  std::optional<NamespaceInfo> removed;
  {
    // Every stripe: no put, promotion or spill of a block of `ns` is half
    // done while the namespace goes (a spill that had passed its checks
    // would otherwise write a deleted block back, uncharged).
    AllStripesLock all(*this);
    if (!ledger_.OwnedBy(tenant, ns)) {
      return absl::NotFoundError("namespace not found");
    }
    leases_->ReleaseNamespace(ns);
    memory_->DeleteNamespace(ns).IgnoreError();
    {
      absl::MutexLock lock(&pending_mu_);
      absl::erase_if(pending_,
                     [&](const auto& entry) { return entry.first.ns == ns; });
    }
    {
      absl::MutexLock lock(&drops_mu_);
      absl::erase_if(queued_drops_,
                     [&](const auto& entry) { return entry.first.ns == ns; });
    }
    if (disk_ != nullptr) {
      absl::StatusOr<TierUsage> d = disk_->DeleteNamespace(ns);
      if (!d.ok()) {
        NoteDiskFault(d.status(), "delete namespace");
        return d.status();
      }
    }
    removed = ledger_.Remove(ns);
    // The owner record goes too (rewritten by a later failed-write retry
    // if this write fails).
    VQKV_RETURN_IF_ERROR(SyncOwner(ns));
  }
  return removed.value_or(NamespaceInfo{});
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
    SettleDropLocked(b.key);
    if (disk_->Contains(b.key) || !memory_->Contains(b.key)) continue;
    if (ExpiredForSpill(b.written_micros)) continue;  // kept in memory only
    const BlockPut put{b.key, b.chain_position, *b.bytes, b.written_micros};
    absl::Status s = disk_->PutBatch(absl::MakeConstSpan(&put, 1))[0];
    if (s.ok()) {
      spills_.fetch_add(1);
    } else {
      NoteDiskFault(s, "flush");
      if (first.ok()) first = s;
    }
  }
  // Owner records whose write failed earlier.
  std::vector<NamespaceId> dirty;
  {
    absl::MutexLock lock(&owner_mu_);
    dirty.assign(dirty_owners_.begin(), dirty_owners_.end());
  }
  for (const NamespaceId& ns : dirty) {
    absl::Status s = SyncOwner(ns);
    if (!s.ok() && first.ok()) first = s;
  }
  absl::Status s = disk_->Flush();
  if (!s.ok()) {
    NoteDiskFault(s, "flush");
    if (first.ok()) first = s;
  }
  SettleDrops();
  return first;
}

StoreStats TieredStore::Impl::Stats() const {
  StoreStats s;
  s.memory = memory_->Usage();
  s.has_disk = disk_ != nullptr;
  if (disk_ != nullptr) {
    s.disk = disk_->Usage();
    s.expired = disk_->expired() + expired_on_spill_.load();
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
  s.namespaces = ledger_.namespaces();
  s.codebooks = codebooks_->size();
  s.codebooks_corrupt_dropped = codebooks_->corrupt_dropped();
  return s;
}

// --- TieredStore --------------------------------------------------------

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Open(
    TieredStoreOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  VQKV_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<TieredStore>(new TieredStore(std::move(impl)));
}

TieredStore::TieredStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TieredStore::~TieredStore() = default;

absl::Status TieredStore::PutBlock(absl::string_view tenant,
                                   const BlockPut& put,
                                   DuplicatePut duplicate) {
  return impl_->PutBlock(tenant, put, duplicate);
}

std::vector<absl::Status> TieredStore::PutBlocks(
    absl::string_view tenant, absl::Span<const BlockPut> puts,
    DuplicatePut duplicate) {
  return impl_->PutBlocks(tenant, puts, duplicate);
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

absl::Status TieredStore::PutCodebooks(absl::string_view tenant, uint64_t hash,
                                       absl::string_view bytes) {
  return impl_->codebooks().Put(tenant, hash, bytes);
}

absl::Status TieredStore::PutCodebooks(uint64_t hash, absl::string_view bytes) {
  return impl_->codebooks().Put("", hash, bytes);
}

absl::Status TieredStore::DeleteCodebooks(absl::string_view tenant,
                                          uint64_t hash) {
  return impl_->codebooks().Delete(tenant, hash);
}

CodebookUsage TieredStore::TenantCodebookUsage(absl::string_view tenant) const {
  return impl_->codebooks().Usage(tenant);
}

absl::StatusOr<SharedBytes> TieredStore::GetCodebooks(uint64_t hash) {
  return impl_->codebooks().Get(hash);
}

bool TieredStore::HasCodebook(uint64_t hash) const {
  return impl_->codebooks().Has(hash);
}

void TieredStore::SetTenantQuota(absl::string_view tenant, uint64_t bytes) {
  impl_->ledger().SetQuota(tenant, bytes);
}

uint64_t TieredStore::TenantUsage(absl::string_view tenant) const {
  impl_->SettleDrops();
  return impl_->ledger().Usage(tenant);
}

uint64_t TieredStore::TenantQuota(absl::string_view tenant) const {
  return impl_->ledger().Quota(tenant);
}

absl::Status TieredStore::Flush() { return impl_->Flush(); }

uint64_t TieredStore::SweepExpired() { return impl_->SweepExpired(); }

StoreStats TieredStore::Stats() const {
  impl_->SettleDrops();
  return impl_->Stats();
}

const TieredStoreOptions& TieredStore::options() const {
  return impl_->options();
}

}  // namespace vqkv::storage
