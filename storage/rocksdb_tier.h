// RocksDbTier: blocks on local disk in RocksDB, plus the persistent parts of
// the store's state (codebook files, namespace owners).
//
// Column families:
//   blocks     BlockKey::Encode() (32 bytes) -> the block bytes, as stored.
//   codebooks  8-byte big-endian codebook hash -> the codebook file bytes.
//   metadata   'b' + 32-byte key -> Record (write time, size, chain
//              position), written in the same atomic WriteBatch as the
//              block; 'n' + 16-byte namespace id -> owning tenant.
// (Codebook and owner records: storage/disk_catalog.h.)
// At Open the metadata records are scanned into an in-memory index, so
// Contains, Usage, TTL checks and eviction need no disk I/O; per-namespace
// usage is recomputed from it (never trusted from a stored counter).
//
// Disk budget: capacity_bytes bounds the sum of stored block sizes (logical
// bytes; RocksDB's own space amplification is not counted), and max_records
// bounds the number of records, since the in-memory index costs about
// kIndexBytesPerRecord of RAM per record whatever the block size (so RAM
// for the index is at most max_records * kIndexBytesPerRecord). A put that
// would exceed either evicts the oldest records (by write time, FIFO) in the
// same write batch; a single block larger than the whole budget is refused
// with kResourceExhausted.
//
// Leases (storage/lease_table.h): with options.leases, budget eviction
// passes over leased records; a batch that could only fit by evicting leased
// records fails with kResourceExhausted and evicts nothing. Leases do not
// stop TTL expiry, Delete or DeleteNamespace.
//
// TTL: each record's write time (from options.clock) is kept in its
// metadata record. Records at least `ttl` old are never served (Get:
// kNotFound, Contains: false) and are removed: lazily when met by Get, at
// the start of every Put, and by SweepExpired(). A duplicate put does not
// refresh a record's write time. A put may give the write time
// (BlockPut::write_micros), e.g. the first write time of a block spilled
// again after a promotion.
//
// Durability: WAL always on. sync_writes = false: WriteOptions.sync = false
// (a crash of the process loses nothing already written, a power loss may
// lose the last writes). sync_writes = true: every write fsyncs the WAL
// before returning, so an acknowledged put survives kill -9 and power loss.
//
// Verification: with verify_blocks (default), every block read is checked
// with VerifyBlock. A record that fails is deleted (never served), counted
// in corrupt_dropped(), reported through on_drop, and Get returns kDataLoss;
// the next Get of that key returns kNotFound.
//
// Errors from RocksDB map to absl codes: NoSpace -> kResourceExhausted,
// IOError/Busy/TryAgain/TimedOut -> kUnavailable, Corruption -> kDataLoss,
// NotFound -> kNotFound, others -> kInternal. Every failed RocksDB operation
// is counted in io_errors(). After a failed write the tier calls
// DB::Resume() before its next write, or, when RocksDB deems the error
// unrecoverable (a failed WAL append), closes and reopens the database and
// reloads the index; so the tier recovers once the fault clears.
//
// Thread safety: all methods are thread-safe. Mutations are serialized by
// one lock (RocksDB write batching is not relied upon); reads run in
// parallel.
#ifndef VQKV_STORAGE_ROCKSDB_TIER_H_
#define VQKV_STORAGE_ROCKSDB_TIER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "storage/disk_catalog.h"
#include "storage/keys.h"
#include "storage/lease_table.h"
#include "storage/tier.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
class Env;
class FileSystem;
class Status;
class WriteBatch;
}  // namespace rocksdb

namespace vqkv::storage {

// Why the tier removed a record on its own.
enum class DropReason {
  kExpired,  // older than the TTL
  kCorrupt,  // failed verification on read
  kEvicted,  // oldest record, evicted for room under the disk budget
};

struct DroppedBlock {
  BlockKey key;
  uint64_t bytes = 0;
  DropReason reason = DropReason::kEvicted;
};

// RAM the index spends per record (index_ and by_age_ entries, b-tree node
// overhead included): measured 162 bytes per record of an opened database,
// RocksDB's cached metadata blocks included (tests/unit/storage/
// rocksdb_tier_test.cc `IndexBytesPerRecordIsBounded`,
// docs/RELIABILITY.md); rounded up.
inline constexpr uint64_t kIndexBytesPerRecord = 192;
// Default bound on disk records: 2^20 records, at most 192 MiB of index
// (16 KiB a record on average fills the default 16 GiB disk budget).
inline constexpr uint64_t kDefaultDiskMaxRecords = uint64_t{1} << 20;

struct RocksDbTierOptions {
  // Database directory; created if missing.
  std::string path;
  uint64_t capacity_bytes = kDefaultDiskBytes;
  // At most this many block records (the index's RAM bound); > 0.
  uint64_t max_records = kDefaultDiskMaxRecords;
  // Bound on RocksDB's memtables, all column families together
  // (DBOptions::db_write_buffer_size); 0: RocksDB's default (no shared cap,
  // up to 2 x 64 MiB per column family).
  uint64_t memtable_bytes = uint64_t{32} << 20;
  // fsync the WAL on every write (see the header comment).
  bool sync_writes = false;
  // Zero: records never expire.
  absl::Duration ttl = absl::ZeroDuration();
  // Time source for write times and the TTL. Default absl::Now.
  std::function<absl::Time()> clock;
  // The file system RocksDB uses; null = the default (real) one. Tests pass
  // a FaultInjectionFileSystem (storage/fault_injection_fs.h).
  std::shared_ptr<rocksdb::FileSystem> file_system;
  // VerifyBlock on every read (stored values must be vqkv blocks).
  bool verify_blocks = true;
  // Called for each record the tier removes on its own (expiry, corruption,
  // budget eviction), never for Delete/DeleteNamespace. Called after the
  // tier's locks are released, on the thread that triggered the removal.
  // May be empty; must be thread-safe.
  std::function<void(const DroppedBlock&)> on_drop;
  // Called for the same removals as on_drop, but at the moment the record
  // leaves the index, under the tier's index lock (so a caller can tell
  // "record present" and "drop reported" apart atomically). Must be short
  // and must not call into this tier. May be empty.
  std::function<void(const DroppedBlock&)> on_drop_committed;
  // Leases budget eviction must respect; null: none. Shared with other
  // tiers; consulted under the index lock (its locks are leaves).
  std::shared_ptr<LeaseTable> leases;
};

class RocksDbTier : public Tier {
 public:
  // Opens or creates the database and loads its index.
  // Errors: kInvalidArgument for an empty path or zero capacity; the mapped
  // RocksDB error when it cannot open (e.g. kUnavailable for I/O errors,
  // kDataLoss for a corrupted database).
  static absl::StatusOr<std::unique_ptr<RocksDbTier>> Open(
      RocksDbTierOptions options);
  // Closes the database (no extra sync; see Flush).
  ~RocksDbTier() override;

  absl::string_view name() const override { return "rocksdb"; }

  // See Tier::Put and the header comment (budget, TTL, durability).
  absl::Status Put(const BlockKey& key, uint32_t chain_position,
                   absl::string_view block) override;
  // Put for many blocks in one atomic RocksDB write batch: one WAL append
  // (one fsync with sync_writes) for all of them. One status per put, in
  // order; the write's error applies to every block the batch carried. A
  // key already held, or repeated within `puts`, is OK and written once.
  std::vector<absl::Status> PutBatch(absl::Span<const BlockPut> puts);
  absl::StatusOr<SharedBytes> Get(const BlockKey& key) override;
  std::vector<bool> Contains(absl::Span<const BlockKey> keys) override;
  bool Contains(const BlockKey& key);
  // Whether the index has a record of `key`, expired or not (an expired one
  // is still to be dropped, and reported through on_drop when it is).
  bool HasRecord(const BlockKey& key) const;
  // What the index knows about a stored, unexpired record.
  struct RecordInfo {
    uint64_t bytes = 0;
    uint32_t chain_position = 0;
    absl::Time write_time;
  };
  std::optional<RecordInfo> Stat(const BlockKey& key);
  // If `key` has a record past the TTL, removes it now (reported through
  // on_drop like any expiry). Returns true when it did.
  bool DropIfExpired(const BlockKey& key);
  absl::StatusOr<uint64_t> Delete(const BlockKey& key) override;
  absl::StatusOr<TierUsage> DeleteNamespace(const NamespaceId& ns) override;
  TierUsage Usage() const override;

  // Removes every record past the TTL now; returns how many.
  uint64_t SweepExpired();

  // Syncs the WAL to disk (for shutdown in async mode).
  absl::Status Flush();

  // --- Codebooks (content-addressed by their 8-byte hash) -----------------
  // Idempotent. Errors: kInvalidArgument for empty bytes; I/O errors.
  absl::Status PutCodebook(uint64_t hash, absl::string_view bytes);
  // PutCodebook plus `tenant`'s reference to it (storage/disk_catalog.h), in
  // one atomic write.
  absl::Status PutCodebookRef(uint64_t hash, absl::string_view bytes,
                              absl::string_view tenant);
  // Removes `tenant`'s reference and, with delete_file, the file too.
  absl::Status DeleteCodebookRef(uint64_t hash, absl::string_view tenant,
                                 bool delete_file);
  // Removes the file and every reference to it (e.g. a corrupt file).
  absl::Status DeleteCodebook(uint64_t hash);
  // Every stored reference (to a stored file).
  std::vector<CodebookRef> CodebookRefs() const;
  // Errors: kNotFound when absent; I/O errors.
  absl::StatusOr<SharedBytes> GetCodebook(uint64_t hash);
  bool HasCodebook(uint64_t hash) const;
  std::vector<uint64_t> CodebookHashes() const;

  // --- Namespace owners ---------------------------------------------------
  absl::Status PutNamespaceOwner(const NamespaceId& ns,
                                 absl::string_view tenant);
  absl::Status DeleteNamespaceOwner(const NamespaceId& ns);
  // Every namespace with an owner record or stored blocks, with its owner
  // ("" when it has blocks but no owner record) and its usage on disk.
  absl::flat_hash_map<NamespaceId, NamespaceInfo> Namespaces() const;

  // --- Counters since Open ------------------------------------------------
  uint64_t expired() const { return expired_.load(); }
  uint64_t corrupt_dropped() const { return corrupt_dropped_.load(); }
  uint64_t evicted() const { return evicted_.load(); }
  uint64_t io_errors() const { return io_errors_.load(); }

  // Test hook: overwrites the stored value of an existing block with `raw`
  // (bypassing verification and the index), to simulate on-disk corruption.
  // kNotFound when the key is not stored.
  absl::Status TEST_OverwriteBlockValue(const BlockKey& key,
                                        absl::string_view raw);
  // The same for a stored codebook file.
  absl::Status TEST_OverwriteCodebookValue(uint64_t hash,
                                           absl::string_view raw);

 private:
  // The metadata record of a stored block.
  struct Record {
    int64_t write_micros = 0;
    uint64_t bytes = 0;
    uint32_t chain_position = 0;

    // 24 bytes: the three fields as little-endian u64s.
    std::string Encode() const;
    // nullopt unless `value` is an encoded record.
    static std::optional<Record> Decode(absl::string_view value);
  };
  // A write batch and what it does (for the error message).
  struct Write;
  // What one PutBatch writes and removes.
  struct PutPlan;

  explicit RocksDbTier(RocksDbTierOptions options);
  // Open/close the DB and (re)build the index from it.
  absl::Status OpenDb() ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  void CloseDbLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status LoadIndex() ABSL_SHARED_LOCKS_REQUIRED(db_mu_);
  void LoadMetadataLocked(absl::string_view key, absl::string_view value)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Calls `fn` with each key and value of column family `cf`.
  absl::Status ForEach(
      rocksdb::ColumnFamilyHandle* cf, absl::string_view what,
      absl::FunctionRef<void(absl::string_view key, absl::string_view value)>
          fn) ABSL_SHARED_LOCKS_REQUIRED(db_mu_);
  // Reads the value of `key` in the column family `cf` names.
  rocksdb::Status Read(rocksdb::ColumnFamilyHandle* RocksDbTier::*cf,
                       absl::string_view key, std::string* value)
      ABSL_LOCKS_EXCLUDED(db_mu_);

  // The write sequence of every mutation. Under write_mu_ (after resuming
  // the database if an earlier write failed), `build` fills a batch from
  // what the index holds (taking mu_ itself); an empty batch writes
  // nothing. The batch is written with the configured durability; once it
  // is, `commit` updates the in-memory state under mu_.
  // Errors: `build`'s (nothing written), or the failed write's (Convert).
  absl::Status Mutate(
      absl::FunctionRef<absl::Status(Write&)> build,
      absl::FunctionRef<void()> commit = [] {}) ABSL_LOCKS_EXCLUDED(write_mu_);
  // Applies `batch` with the configured durability. After a failed write
  // the next call first resumes (or reopens) the database.
  rocksdb::Status WriteLocked(rocksdb::WriteBatch* batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Adds the removal of `key`'s block and its metadata record to `batch`.
  void DeleteRecord(rocksdb::WriteBatch& batch, const BlockKey& key) const;
  // PutBatch's plan, from the index: which puts to write, which records to
  // remove for room. Leaves the plan's writes empty (and sets their
  // results) when only leased records could make room.
  void PlanPutLocked(absl::Span<const BlockPut> puts, int64_t now,
                     std::vector<absl::Status>& results, PutPlan& plan)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Picks the records to remove so `incoming` bytes in `incoming_records`
  // records fit (and expired ones, up to a limit). False when the budget
  // cannot be met without leased ones.
  bool ChooseVictimsLocked(uint64_t incoming, uint64_t incoming_records,
                           int64_t now, PutPlan& plan)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  int64_t NowMicros() const;
  bool ExpiredAt(const Record& r, int64_t now_micros) const;
  // Maps a RocksDB status and counts I/O errors.
  absl::Status Convert(const rocksdb::Status& s, absl::string_view what);
  // Call before a write: after an earlier failed write, resumes the DB, or
  // reopens it when RocksDB considers the error unrecoverable.
  void MaybeResumeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Removes `key` from disk and index, if present and (with write_micros)
  // still the record written then. Returns the bytes removed (0: none).
  // With `reason`, reports the removal to on_drop_committed.
  absl::StatusOr<uint64_t> EraseRecord(
      const BlockKey& key, std::optional<int64_t> write_micros,
      absl::string_view what, std::optional<DropReason> reason = std::nullopt);
  // Removes `key` if it is still the record written at write_micros;
  // reports it through on_drop.
  void DropRecord(const BlockKey& key, int64_t write_micros, DropReason reason);
  void ReportDrops(const std::vector<DroppedBlock>& drops);
  void EraseFromIndexLocked(const BlockKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RocksDbTierOptions options_;
  std::unique_ptr<rocksdb::Env> env_;  // wraps options_.file_system
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // owned; closed in dtor
  rocksdb::ColumnFamilyHandle* blocks_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* codebooks_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* metadata_cf_ = nullptr;

  // Serializes mutations. Lock order: write_mu_, db_mu_, mu_.
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(db_mu_);
  bool needs_resume_ ABSL_GUARDED_BY(write_mu_) = false;
  // Shared by every use of db_; exclusive to (re)open or close it.
  mutable absl::Mutex db_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // Why the last reopen failed (db_ is null then): named in the errors of
  // the writes and reads that find the database closed.
  std::string reopen_error_ ABSL_GUARDED_BY(db_mu_);

  mutable absl::Mutex mu_;
  absl::btree_map<BlockKey, Record> index_ ABSL_GUARDED_BY(mu_);
  // (write time, key), oldest first: eviction and expiry order.
  absl::btree_set<std::pair<int64_t, BlockKey>> by_age_ ABSL_GUARDED_BY(mu_);
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Codebook hashes and namespace owners (its own lock, after mu_).
  DiskCatalog catalog_;

  std::atomic<uint64_t> expired_{0};
  std::atomic<uint64_t> corrupt_dropped_{0};
  std::atomic<uint64_t> evicted_{0};
  std::atomic<uint64_t> io_errors_{0};
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_ROCKSDB_TIER_H_
