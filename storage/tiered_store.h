// TieredStore: the storage facade the cache service uses. A memory tier
// (storage/memory_tier.h) in front of an optional RocksDB tier
// (storage/rocksdb_tier.h), plus the codebook registry
// (storage/codebook_registry.h) and namespace ownership and per-tenant
// quotas (storage/namespace_ledger.h).
//
// Writes go to memory. Blocks evicted from memory are spilled to disk
// (WritePolicy::kSpill), or every put is also written to disk at once
// (WritePolicy::kWriteThrough, forced by Durability::kSync). A block being
// spilled stays readable until it is on disk, so eviction never causes a
// transient miss. Reads try memory,
// then disk; a disk hit is promoted back into memory. Memory evicts the tail
// of a prefix before its head (memory_tier.h), disk evicts its oldest
// records when full and drops records older than the TTL.
//
// Tenants and namespaces: every namespace belongs to exactly one tenant, the
// one whose put created it (persisted on disk). For any other tenant the
// namespace does not exist: its puts fail with kPermissionDenied (the
// service maps that to NOT_FOUND), its gets return kNotFound, its lookups
// report nothing present, its deletes return kNotFound. Tenant names are
// opaque strings; "" is a valid tenant (e.g. auth turned off).
//
// Quotas: a tenant's usage is the bytes of its blocks held anywhere in the
// store (a block in both tiers counts once). A put that would take the
// tenant past its quota fails with kResourceExhausted. After a restart,
// usage is recomputed from what the disk holds.
//
// Memory bound: the memory budget charges every block its size plus the
// memory tier's per-entry overhead (storage/memory_tier.h,
// kEntryOverheadBytes), so it bounds the heap the blocks take, tiny blocks
// included. The disk tier's in-memory index is bounded by disk_max_records
// (storage/rocksdb_tier.h, kIndexBytesPerRecord), by default to a quarter
// of the memory budget. docs/RELIABILITY.md.
//
// Namespaces: a put claims an unowned namespace only once its tenant's
// quota admits it, so a tenant over quota creates none; a tenant owns at
// most max_namespaces_per_tenant, and a claim at that bound reclaims the
// tenant's empty namespaces (storage/namespace_ledger.h). An owner record
// whose disk write failed is written again by the next put into the
// namespace (which, in kSync mode, fails unless it succeeds) and by Flush.
//
// Duplicates: a put of a key already held keeps the stored copy; it
// returns OK (idempotent, DuplicatePut::kOk) or kAlreadyExists
// (DuplicatePut::kAlreadyExists). The decision is made under the key's
// lock, so of two racing puts of one key exactly one stores it and, with
// kAlreadyExists, the other gets kAlreadyExists.
//
// Disk faults: when the disk tier fails (I/O error, disk full), the store
// keeps serving from memory. The fault is counted in Stats (disk_faults,
// disk_fault, last_disk_error) and its first occurrence is logged as a
// warning (base/logging.h).
// In kAsync mode a put whose disk write fails still succeeds (the block is in
// memory); in kSync mode it fails with the disk's error (kUnavailable or
// kResourceExhausted), since sync promises the block survives a crash.
//
// Every read from disk is verified (VerifyBlock); a corrupted record is
// dropped, counted in Stats::corrupt_dropped, and reported as kDataLoss
// once; afterwards the key is kNotFound.
//
// Leases: a Lookup with a lease leases the blocks of the prefix it returns
// (storage/lease_table.h), in whichever tier they are. Until the lease ends
// neither memory eviction nor disk budget eviction removes them, so a
// GetBlocks that follows finds them. A lease is a hint, not a reservation:
// a put that could only make room in memory by evicting leased blocks goes
// to disk instead (whatever the write policy), and without a disk tier, or
// when the disk's budget is leased too, fails with kResourceExhausted;
// DeleteBlock / DeleteNamespace and the disk TTL still remove leased blocks.
// The TTL counts from a block's first disk write: a block promoted from
// disk into memory and evicted again keeps its record's write time, and is
// dropped instead of spilled when that is past the TTL.
// One gap: the disk tier picks its budget victims before it writes its
// batch, so a lease granted during that write does not save a record already
// picked (memory eviction has no such gap).
//
// Thread safety: all methods are thread-safe.
#ifndef VQKV_STORAGE_TIERED_STORE_H_
#define VQKV_STORAGE_TIERED_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "storage/codebook_registry.h"
#include "storage/keys.h"
#include "storage/namespace_ledger.h"
#include "storage/rocksdb_tier.h"
#include "storage/tier.h"

namespace rocksdb {
class FileSystem;
}  // namespace rocksdb

namespace vqkv::storage {

enum class Durability {
  // WAL on, not fsync'd per put: fast; a crash may lose the last puts.
  kAsync,
  // Every disk write fsyncs the WAL before the put is acknowledged: a put
  // acknowledged before kill -9 is served bit-exact after restart.
  kSync,
};

// What a put of a key already held returns (see the header comment).
enum class DuplicatePut {
  kOk,             // OK: idempotent
  kAlreadyExists,  // kAlreadyExists
};

enum class WritePolicy {
  // Blocks go to disk when memory evicts them (and on Flush()).
  kSpill,
  // Every put is written to disk as well as to memory.
  kWriteThrough,
};

// "async"/"sync", "spill"/"write_through" <-> enums, for config files and
// flags. Parse errors are kInvalidArgument.
absl::string_view DurabilityName(Durability d);
absl::StatusOr<Durability> ParseDurability(absl::string_view text);
absl::string_view WritePolicyName(WritePolicy p);
absl::StatusOr<WritePolicy> ParseWritePolicy(absl::string_view text);

// The default disk record bound for a memory budget: an index of at most
// memory_bytes / 4 (kIndexBytesPerRecord a record), at least 4096 records.
// E.g. 1 GiB: 1,398,101 records; 64 MiB: 87,381.
uint64_t DiskMaxRecordsFor(uint64_t memory_bytes);

struct TieredStoreOptions {
  // Memory tier budget (hard) and shard count.
  uint64_t memory_bytes = uint64_t{1} << 30;  // 1 GiB
  int memory_shards = 16;

  // RocksDB directory. Empty: memory only (no disk tier, no persistence;
  // blocks evicted from memory are gone).
  std::string data_dir;
  // Disk budget over stored block bytes; the oldest records are evicted to
  // make room (storage/rocksdb_tier.h).
  uint64_t disk_bytes = kDefaultDiskBytes;  // 16 GiB
  // Bound on disk records, i.e. on the RAM of the disk tier's index
  // (RocksDbTierOptions::max_records). 0: DiskMaxRecordsFor(memory_bytes),
  // an index of at most a quarter of the memory budget.
  uint64_t disk_max_records = 0;
  Durability durability = Durability::kAsync;
  // Ignored (treated as kWriteThrough) when durability is kSync.
  WritePolicy write_policy = WritePolicy::kSpill;
  // Disk records older than this are neither served nor kept. Zero: no TTL.
  absl::Duration ttl = absl::ZeroDuration();

  // Bytes of codebook files cached in memory (all registered hashes are
  // always known; their bytes are read from disk on a cache miss). Without
  // a disk tier every codebook stays in memory regardless.
  uint64_t codebook_cache_bytes = uint64_t{256} << 20;
  // Each tenant's bound on registered codebook sets (count and bytes).
  CodebookQuota codebook_quota;

  // Per-tenant byte quotas; tenants not listed get default_tenant_quota.
  // 0 means unlimited.
  uint64_t default_tenant_quota = 0;
  absl::flat_hash_map<std::string, uint64_t> tenant_quotas;
  // Namespaces one tenant may own (0: unlimited); see the header comment.
  uint64_t max_namespaces_per_tenant = kDefaultMaxNamespacesPerTenant;

  // At most this many leases are held at once (live ones, and expired ones
  // not yet dropped); a lookup past it still answers, without leasing.
  size_t max_leases = size_t{1} << 20;

  // Seams for tests. clock: the time used for TTL and leases (default
  // absl::Now).
  // file_system: the RocksDB file system (default: the real one), e.g. a
  // storage::FaultInjectionFileSystem.
  // codebook_verifier: checks each codebook file read from disk (default:
  // VerifyCodebookFile, the content hash; tests that store stand-in bytes
  // replace it).
  // before_spill_write: called with a block's stripe lock held, between the
  // spill's checks and its disk write (for interleaving tests). Empty: none.
  std::function<absl::Time()> clock;
  std::shared_ptr<rocksdb::FileSystem> file_system;
  std::function<absl::Status(uint64_t hash, absl::string_view bytes)>
      codebook_verifier;
  std::function<void(const BlockKey&)> before_spill_write;
};

// Counters since Open (usage fields are current values).
struct StoreStats {
  TierUsage memory;  // held in the memory tier
  TierUsage disk;    // held in the disk tier (0 without one)
  bool has_disk = false;

  uint64_t puts = 0;              // blocks newly stored
  uint64_t duplicate_puts = 0;    // puts of a key already held (no-op OK)
  uint64_t puts_rejected = 0;     // puts that returned an error
  uint64_t quota_rejections = 0;  // of which over a tenant quota

  uint64_t memory_hits = 0;  // Get/GetBlocks served from memory
  uint64_t disk_hits = 0;    // served from disk
  uint64_t misses = 0;       // kNotFound

  uint64_t memory_evictions = 0;  // blocks evicted from memory
  uint64_t spills = 0;            // of those, written to disk
  uint64_t dropped = 0;           // blocks that left the store for lack of
                                  // room (memory eviction with nothing
                                  // behind it, disk budget eviction)
  uint64_t promotions = 0;        // disk hits copied into memory
  uint64_t expired = 0;           // disk records dropped by the TTL
  uint64_t corrupt_dropped = 0;   // disk records that failed verification
  uint64_t codebooks_corrupt_dropped = 0;  // codebook files that failed it

  bool disk_fault = false;      // a disk operation has failed since Open
  uint64_t disk_faults = 0;     // number of failed disk operations
  std::string last_disk_error;  // the latest one's status text

  uint64_t leases = 0;      // lease entries held (live, or expired and not
                            // yet dropped)
  uint64_t namespaces = 0;  // registered namespaces
  uint64_t codebooks = 0;   // registered codebook sets
};

// Result of a Lookup: the longest cached prefix and per-block presence.
struct LookupResult {
  // Number of leading hashes present (present[0..prefix_blocks) all true,
  // present[prefix_blocks] false or past the end).
  int64_t prefix_blocks = 0;
  std::vector<bool> present;  // one per requested hash, in order
};

class TieredStore {
 public:
  // Opens (or creates) the store. With a data_dir, reopens what a previous
  // process stored there: blocks, codebooks, namespace owners.
  // Errors: kInvalidArgument for bad options (memory_bytes 0, ...);
  // kUnavailable / kDataLoss / kInternal when RocksDB cannot open.
  static absl::StatusOr<std::unique_ptr<TieredStore>> Open(
      TieredStoreOptions options);

  TieredStore(const TieredStore&) = delete;
  TieredStore& operator=(const TieredStore&) = delete;
  // Does not Flush(); call Flush() first for an orderly shutdown.
  ~TieredStore();

  // --- Blocks -------------------------------------------------------------

  // Stores one block for `tenant`. Validation, in order:
  //  - VerifyBlock(block): kInvalidArgument for a non-block or impossible
  //    header, kDataLoss for truncation or a checksum mismatch;
  //  - a nonzero header codebook_hash must be registered
  //    (PutCodebooks): else kFailedPrecondition;
  //  - the namespace must be unowned (this put claims it for `tenant`) or
  //    owned by `tenant`: else kPermissionDenied;
  //  - the tenant's quota: else kResourceExhausted.
  // A put of a key already held is idempotent: OK, no double counting.
  // Also kResourceExhausted when the block fits neither tier (room held by
  // leased blocks counts as no room), and in kSync mode the disk's error
  // when the durable write fails.
  // With DuplicatePut::kAlreadyExists a put of a key already held returns
  // kAlreadyExists instead.
  absl::Status PutBlock(absl::string_view tenant, const BlockPut& put,
                        DuplicatePut duplicate = DuplicatePut::kOk);

  // PutBlock for each element; one status per put, in order.
  std::vector<absl::Status> PutBlocks(
      absl::string_view tenant, absl::Span<const BlockPut> puts,
      DuplicatePut duplicate = DuplicatePut::kOk);

  // Returns the block stored under `key` if `tenant` owns its namespace.
  // Errors: kNotFound (absent, expired, or another tenant's namespace);
  // kDataLoss when the disk record was corrupt (now dropped); kUnavailable
  // for a disk I/O error.
  absl::StatusOr<SharedBytes> GetBlock(absl::string_view tenant,
                                       const BlockKey& key);

  // GetBlock for each hash of namespace `ns`: one result per hash, in order,
  // so a partial hit is not an error.
  std::vector<absl::StatusOr<SharedBytes>> GetBlocks(
      absl::string_view tenant, const NamespaceId& ns,
      absl::Span<const BlockHash> hashes);

  // GetBlocks without disk I/O, for callers that must not block (the
  // service's gRPC callback threads): when every block is held in memory
  // (or is being spilled) or is known to be absent (the disk tier's index
  // is in memory), returns what GetBlocks would and counts it the same way.
  // Returns nullopt, counting nothing, when some block is only on disk.
  std::optional<std::vector<absl::StatusOr<SharedBytes>>> GetBlocksFromMemory(
      absl::string_view tenant, const NamespaceId& ns,
      absl::Span<const BlockHash> hashes);

  // Whether putting `bytes` more bytes of blocks may write to disk: always
  // with write-through (or sync), never without a disk tier, and under
  // kSpill when the memory tier is close enough to its budget that the put
  // is likely to evict (and so spill). A hint for where to run the put; a
  // put is correct either way.
  bool PutMayTouchDisk(uint64_t bytes) const;

  // Which of `hashes` (an ordered prefix chain in namespace `ns`) are held,
  // and how many leading ones. One batched call; no payload I/O.
  // With lease > 0, each block of the returned prefix is leased until
  // clock() + lease (an existing later lease is kept): eviction passes over
  // it until then (see the header comment). The prefix is checked again
  // after leasing, so a block evicted meanwhile shortens it rather than
  // being reported with a lease it cannot have. When the lease table is
  // full (max_leases) the rest of the prefix is reported unleased.
  LookupResult Lookup(absl::string_view tenant, const NamespaceId& ns,
                      absl::Span<const BlockHash> hashes,
                      absl::Duration lease = absl::ZeroDuration());

  // Removes one block (leased or not) and its lease.
  // Errors: kNotFound when absent or not the tenant's;
  // kUnavailable when the disk delete fails (memory copy already removed).
  absl::Status DeleteBlock(absl::string_view tenant, const BlockKey& key);

  // Removes a namespace: its blocks in both tiers (leased or not), their
  // leases and its owner record, so a later put may claim it anew. Returns
  // what was removed.
  // Errors: kNotFound when the namespace is unknown or not the tenant's;
  // kUnavailable when the disk delete fails.
  absl::StatusOr<NamespaceInfo> DeleteNamespace(absl::string_view tenant,
                                                const NamespaceId& ns);

  // Owner and usage of a namespace. kNotFound when unknown.
  absl::StatusOr<NamespaceInfo> GetNamespaceInfo(const NamespaceId& ns) const;

  // --- Codebook registry (content-addressed, shared by all tenants) -------
  // (storage/codebook_registry.h: references, quotas, verification.)

  // Registers a codebook file under its hash (the set's content hash,
  // kernels/codebook_set.h; the caller checks that hash matches the bytes)
  // with a reference for `tenant`, counted against its codebook quota.
  // Idempotent when the tenant already holds one. Persisted when there is a
  // disk tier. Errors: kInvalidArgument for hash 0 or empty bytes;
  // kResourceExhausted over the tenant's codebook quota; kUnavailable /
  // kResourceExhausted when the disk write fails.
  absl::Status PutCodebooks(absl::string_view tenant, uint64_t hash,
                            absl::string_view bytes);
  // PutCodebooks for the anonymous tenant "".
  absl::Status PutCodebooks(uint64_t hash, absl::string_view bytes);
  // Drops `tenant`'s reference (the file goes with the last one). Blocks
  // that refer to the set stay; new puts of such blocks fail with
  // kFailedPrecondition until it is registered again.
  // Errors: kNotFound when the tenant holds no reference; disk errors.
  absl::Status DeleteCodebooks(absl::string_view tenant, uint64_t hash);
  // Errors: kNotFound when not registered; kDataLoss when the file on disk
  // failed verification (it is dropped) or the read failed so;
  // kUnavailable for a disk read failure.
  absl::StatusOr<SharedBytes> GetCodebooks(uint64_t hash);
  bool HasCodebook(uint64_t hash) const;
  CodebookUsage TenantCodebookUsage(absl::string_view tenant) const;

  // --- Tenants ------------------------------------------------------------

  // Sets (0: removes the limit on) a tenant's quota; takes effect for later
  // puts. Usage already above a lowered quota is not evicted.
  void SetTenantQuota(absl::string_view tenant, uint64_t bytes);
  // Bytes of the tenant's blocks held in the store.
  uint64_t TenantUsage(absl::string_view tenant) const;
  // The tenant's quota in bytes (0: unlimited): the last SetTenantQuota,
  // else options().tenant_quotas, else options().default_tenant_quota.
  // (options() itself is never changed by SetTenantQuota.)
  uint64_t TenantQuota(absl::string_view tenant) const;

  // --- Maintenance --------------------------------------------------------

  // For shutdown: spills blocks held only in memory to disk (kSpill) and
  // syncs the WAL, so a restart finds them. No-op without a disk tier.
  // Errors: the first disk error met (the rest is still attempted).
  absl::Status Flush();

  // Drops disk records past the TTL now (they are also dropped lazily).
  // Returns the number dropped.
  uint64_t SweepExpired();

  StoreStats Stats() const;
  const TieredStoreOptions& options() const;

 private:
  class Impl;
  explicit TieredStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_TIERED_STORE_H_
