#include "storage/rocksdb_tier.h"

#include <algorithm>
#include <exception>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/coding.h"
#include "base/status_macros.h"
#include "kernels/block.h"
#include "rocksdb/db.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "rocksdb/options.h"
#include "rocksdb/status.h"
#include "rocksdb/write_batch.h"

namespace vqkv::storage {
namespace {

constexpr char kBlocksCf[] = "blocks";
constexpr char kCodebooksCf[] = "codebooks";
constexpr char kMetadataCf[] = "metadata";
constexpr char kBlockRecordTag = 'b';
constexpr size_t kRecordBytes = 24;
// Expired records removed per Put at most (the rest go lazily or by sweep).
constexpr int kMaxExpiredPerPut = 1024;

std::string BlockRecordKey(const BlockKey& key) {
  std::string out(1 + BlockKey::kEncodedSize, kBlockRecordTag);
  key.EncodeTo(out.data() + 1);
  return out;
}

// One status per put: kInvalidArgument for an empty block,
// kResourceExhausted for one larger than the whole budget, else OK.
std::vector<absl::Status> CheckSizes(absl::Span<const BlockPut> puts,
                                     uint64_t capacity_bytes) {
  std::vector<absl::Status> results(puts.size());
  for (size_t i = 0; i < puts.size(); ++i) {
    const absl::string_view block = puts[i].block;
    if (block.empty()) {
      results[i] = absl::InvalidArgumentError("rocksdb tier: empty block");
    } else if (block.size() > capacity_bytes) {
      results[i] = absl::ResourceExhaustedError(
          absl::StrCat("rocksdb tier: a block of ", block.size(),
                       " bytes is larger than the disk budget of ",
                       capacity_bytes, " bytes"));
    }
  }
  return results;
}

rocksdb::Slice ToSlice(absl::string_view s) {
  return rocksdb::Slice(s.data(), s.size());
}

}  // namespace

struct RocksDbTier::Write {
  rocksdb::WriteBatch batch;
  std::string what;  // for the error message
};

struct RocksDbTier::PutPlan {
  std::vector<size_t> writes;  // indices of the puts to write
  // Keys the batch writes, including those trimmed off for lack of room.
  absl::flat_hash_set<BlockKey> keys;
  std::vector<BlockKey> removed;    // records removed (room, expiry)
  std::vector<DroppedBlock> drops;  // of those, the ones to report
  uint64_t replaced_expired = 0;    // expired records of keys in the batch
  std::vector<Record> records;      // one per write, once built
};

std::string RocksDbTier::Record::Encode() const {
  std::string out;
  base::PutFixed64(&out, static_cast<uint64_t>(write_micros));
  base::PutFixed64(&out, bytes);
  base::PutFixed64(&out, chain_position);
  return out;
}

std::optional<RocksDbTier::Record> RocksDbTier::Record::Decode(
    absl::string_view value) {
  if (value.size() != kRecordBytes) return std::nullopt;
  Record r;
  r.write_micros = static_cast<int64_t>(base::DecodeFixed64(value.data()));
  r.bytes = base::DecodeFixed64(value.data() + 8);
  r.chain_position =
      static_cast<uint32_t>(base::DecodeFixed64(value.data() + 16));
  return r;
}

RocksDbTier::RocksDbTier(RocksDbTierOptions options)
    : options_(std::move(options)) {}

RocksDbTier::~RocksDbTier() {
  absl::MutexLock write_lock(&write_mu_);
  absl::MutexLock db_lock(&db_mu_);
  CloseDbLocked();
}

absl::StatusOr<std::unique_ptr<RocksDbTier>> RocksDbTier::Open(
    RocksDbTierOptions options) {
  if (options.path.empty()) {
    return absl::InvalidArgumentError("rocksdb tier: empty path");
  }
  if (options.capacity_bytes == 0) {
    return absl::InvalidArgumentError("rocksdb tier: zero capacity");
  }
  if (options.max_records == 0) {
    return absl::InvalidArgumentError("rocksdb tier: zero max_records");
  }
  std::unique_ptr<RocksDbTier> tier(new RocksDbTier(std::move(options)));
  try {
    absl::MutexLock write_lock(&tier->write_mu_);
    absl::MutexLock db_lock(&tier->db_mu_);
    VQKV_RETURN_IF_ERROR(tier->OpenDb());
    VQKV_RETURN_IF_ERROR(tier->LoadIndex());
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("rocksdb tier: exception while opening: ", e.what()));
  }
  tier->SweepExpired();
  return tier;
}

absl::Status RocksDbTier::OpenDb() {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.keep_log_file_num = 2;
  // One cap on the memtables of all column families (each would otherwise
  // take up to 2 x 64 MiB): with small blocks kept inline, memtables are
  // the largest RAM user after the index.
  db_options.db_write_buffer_size = options_.memtable_bytes;
  db_options.max_manifest_file_size = 64 << 20;
  if (options_.file_system != nullptr) {
    env_ = rocksdb::NewCompositeEnv(options_.file_system);
    db_options.env = env_.get();
  }

  rocksdb::ColumnFamilyOptions blocks_options;
  // Codes are high-entropy; compressing them costs CPU for nothing.
  blocks_options.compression = rocksdb::kNoCompression;
  // Blocks are KiB to MiB: keep them in blob files, out of the LSM tree.
  blocks_options.enable_blob_files = true;
  blocks_options.min_blob_size = 4096;
  blocks_options.enable_blob_garbage_collection = true;
  rocksdb::ColumnFamilyOptions codebooks_options;
  codebooks_options.compression = rocksdb::kNoCompression;
  codebooks_options.enable_blob_files = true;
  codebooks_options.min_blob_size = 4096;
  rocksdb::ColumnFamilyOptions metadata_options;

  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {kBlocksCf, blocks_options},
      {kCodebooksCf, codebooks_options},
      {kMetadataCf, metadata_options},
  };
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s =
      rocksdb::DB::Open(db_options, options_.path, cfs, &handles_, &raw);
  if (!s.ok()) {
    return Convert(s, absl::StrCat("opening ", options_.path));
  }
  db_.reset(raw);
  blocks_cf_ = handles_[1];
  codebooks_cf_ = handles_[2];
  metadata_cf_ = handles_[3];
  return absl::OkStatus();
}

absl::Status RocksDbTier::LoadIndex() {
  absl::MutexLock lock(&mu_);
  index_.clear();
  by_age_.clear();
  bytes_ = 0;
  catalog_.Clear();
  VQKV_RETURN_IF_ERROR(
      ForEach(metadata_cf_, "loading metadata",
              [this](absl::string_view k, absl::string_view v) {
                LoadMetadataLocked(k, v);
              }));
  return ForEach(codebooks_cf_, "loading codebooks",
                 [this](absl::string_view k, absl::string_view) {
                   catalog_.LoadCodebookKey(k);
                 });
}

void RocksDbTier::LoadMetadataLocked(absl::string_view k, absl::string_view v) {
  if (catalog_.LoadOwner(k, v)) return;
  if (catalog_.LoadCodebookRef(k, v)) return;
  if (k.size() != 1 + BlockKey::kEncodedSize || k[0] != kBlockRecordTag) {
    return;
  }
  absl::StatusOr<BlockKey> key = BlockKey::Decode(k.substr(1));
  std::optional<Record> r = Record::Decode(v);
  if (!key.ok() || !r.has_value()) return;
  index_[*key] = *r;
  by_age_.emplace(r->write_micros, *key);
  bytes_ += r->bytes;
}

absl::Status RocksDbTier::ForEach(
    rocksdb::ColumnFamilyHandle* cf, absl::string_view what,
    absl::FunctionRef<void(absl::string_view, absl::string_view)> fn) {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), cf));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    fn(absl::string_view(it->key().data(), it->key().size()),
       absl::string_view(it->value().data(), it->value().size()));
  }
  return it->status().ok() ? absl::OkStatus() : Convert(it->status(), what);
}

rocksdb::Status RocksDbTier::Read(rocksdb::ColumnFamilyHandle* RocksDbTier::*cf,
                                  absl::string_view key, std::string* value) {
  absl::ReaderMutexLock db_lock(&db_mu_);
  if (db_ == nullptr) {
    return rocksdb::Status::IOError(
        "database closed after a fault; reopening failed", reopen_error_);
  }
  return db_->Get(rocksdb::ReadOptions(), this->*cf, ToSlice(key), value);
}

int64_t RocksDbTier::NowMicros() const {
  return absl::ToUnixMicros(options_.clock ? options_.clock() : absl::Now());
}

bool RocksDbTier::ExpiredAt(const Record& r, int64_t now_micros) const {
  if (options_.ttl <= absl::ZeroDuration()) return false;
  return now_micros - r.write_micros >= absl::ToInt64Microseconds(options_.ttl);
}

absl::Status RocksDbTier::Convert(const rocksdb::Status& s,
                                  absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg =
      absl::StrCat("rocksdb tier: ", what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  io_errors_.fetch_add(1);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsIOError() || s.IsBusy() || s.IsTryAgain() || s.IsTimedOut() ||
      s.IsAborted() || s.IsIncomplete()) {
    return absl::UnavailableError(msg);
  }
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

void RocksDbTier::MaybeResumeLocked() {
  if (!needs_resume_) return;
  {
    absl::ReaderMutexLock db_lock(&db_mu_);
    if (db_ != nullptr && db_->Resume().ok()) {
      needs_resume_ = false;
      return;
    }
  }
  // RocksDB treats some write errors (e.g. a failed WAL append) as
  // unrecoverable for the open instance: reopen the database, which replays
  // the WAL, and reload the index from what is durable.
  absl::MutexLock db_lock(&db_mu_);
  CloseDbLocked();
  absl::Status s = OpenDb();
  if (s.ok()) s = LoadIndex();
  if (s.ok()) {
    needs_resume_ = false;
    reopen_error_.clear();
  } else {
    reopen_error_ = std::string(s.message());
    CloseDbLocked();
  }
}

rocksdb::Status RocksDbTier::WriteLocked(rocksdb::WriteBatch* batch) {
  absl::ReaderMutexLock db_lock(&db_mu_);
  if (db_ == nullptr) {
    needs_resume_ = true;
    return rocksdb::Status::IOError(
        "database closed after a fault; reopening failed", reopen_error_);
  }
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  rocksdb::Status s = db_->Write(wo, batch);
  needs_resume_ = !s.ok();
  return s;
}

absl::Status RocksDbTier::Mutate(absl::FunctionRef<absl::Status(Write&)> build,
                                 absl::FunctionRef<void()> commit) {
  absl::MutexLock write_lock(&write_mu_);
  MaybeResumeLocked();
  Write w;
  VQKV_RETURN_IF_ERROR(build(w));
  if (w.batch.Count() == 0) return absl::OkStatus();
  rocksdb::Status s = WriteLocked(&w.batch);
  if (!s.ok()) return Convert(s, w.what);
  absl::MutexLock lock(&mu_);
  commit();
  return absl::OkStatus();
}

void RocksDbTier::DeleteRecord(rocksdb::WriteBatch& batch,
                               const BlockKey& key) const {
  batch.Delete(blocks_cf_, key.Encode()).PermitUncheckedError();
  batch.Delete(metadata_cf_, BlockRecordKey(key)).PermitUncheckedError();
}

void RocksDbTier::CloseDbLocked() {
  if (db_ == nullptr) return;
  for (rocksdb::ColumnFamilyHandle* h : handles_) {
    db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  }
  handles_.clear();
  db_->Close().PermitUncheckedError();
  db_.reset();
  blocks_cf_ = codebooks_cf_ = metadata_cf_ = nullptr;
}

void RocksDbTier::EraseFromIndexLocked(const BlockKey& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return;
  by_age_.erase({it->second.write_micros, key});
  bytes_ -= it->second.bytes;
  index_.erase(it);
}

void RocksDbTier::ReportDrops(const std::vector<DroppedBlock>& drops) {
  if (!options_.on_drop) return;
  for (const DroppedBlock& d : drops) options_.on_drop(d);
}

absl::Status RocksDbTier::Put(const BlockKey& key, uint32_t chain_position,
                              absl::string_view block) {
  const BlockPut put{key, chain_position, block};
  return PutBatch(absl::MakeConstSpan(&put, 1))[0];
}

std::vector<absl::Status> RocksDbTier::PutBatch(
    absl::Span<const BlockPut> puts) {
  std::vector<absl::Status> results = CheckSizes(puts, options_.capacity_bytes);
  PutPlan plan;
  const absl::Status written = Mutate(
      [&](Write& w) {
        const int64_t now = NowMicros();
        {
          absl::ReaderMutexLock lock(&mu_);
          PlanPutLocked(puts, now, results, plan);
        }
        if (plan.writes.empty()) return absl::OkStatus();
        for (const BlockKey& k : plan.removed) DeleteRecord(w.batch, k);
        for (size_t i : plan.writes) {
          const BlockPut& p = puts[i];
          plan.records.push_back(
              Record{p.write_micros != 0 ? p.write_micros : now, p.block.size(),
                     p.chain_position});
          // Block and record in one batch: both or neither reach the WAL.
          w.batch.Put(blocks_cf_, p.key.Encode(), ToSlice(p.block))
              .PermitUncheckedError();
          w.batch
              .Put(metadata_cf_, BlockRecordKey(p.key),
                   plan.records.back().Encode())
              .PermitUncheckedError();
        }
        w.what =
            plan.writes.size() == 1
                ? absl::StrCat("put ", puts[plan.writes[0]].key.DebugString())
                : absl::StrCat("put of ", plan.writes.size(), " blocks");
        return absl::OkStatus();
      },
      [&] {
        for (const BlockKey& k : plan.removed) EraseFromIndexLocked(k);
        for (size_t j = 0; j < plan.writes.size(); ++j) {
          const BlockKey& key = puts[plan.writes[j]].key;
          index_[key] = plan.records[j];
          by_age_.emplace(plan.records[j].write_micros, key);
          bytes_ += plan.records[j].bytes;
        }
        for (const DroppedBlock& d : plan.drops) {
          (d.reason == DropReason::kExpired ? expired_ : evicted_).fetch_add(1);
          if (options_.on_drop_committed) options_.on_drop_committed(d);
        }
        expired_.fetch_add(plan.replaced_expired);
      });
  if (!written.ok()) {
    for (size_t i : plan.writes) results[i] = written;
    return results;
  }
  ReportDrops(plan.drops);
  return results;
}

void RocksDbTier::PlanPutLocked(absl::Span<const BlockPut> puts, int64_t now,
                                std::vector<absl::Status>& results,
                                PutPlan& plan) {
  uint64_t incoming = 0;
  for (size_t i = 0; i < puts.size(); ++i) {
    if (!results[i].ok()) continue;
    auto found = index_.find(puts[i].key);
    if (found != index_.end() && !ExpiredAt(found->second, now)) {
      continue;  // idempotent
    }
    if (!plan.keys.insert(puts[i].key).second) continue;  // repeated key
    plan.writes.push_back(i);
    incoming += puts[i].block.size();
  }
  if (plan.writes.empty()) return;
  // Make room for the whole batch at once, oldest records first. A batch
  // larger than the budget evicts everything older and keeps only what
  // fits, newest last (the caller sees kResourceExhausted for the rest).
  while (incoming > options_.capacity_bytes ||
         plan.writes.size() > options_.max_records) {
    const size_t i = plan.writes.front();
    incoming -= puts[i].block.size();
    results[i] = absl::ResourceExhaustedError(
        "rocksdb tier: the batch is larger than the disk budget");
    plan.writes.erase(plan.writes.begin());
  }
  if (ChooseVictimsLocked(incoming, plan.writes.size(), now, plan)) return;
  // Only leased records are left to evict: a lease is never broken for
  // room. Nothing is written or removed (expired records go on a later put
  // or sweep).
  const absl::Status full = absl::ResourceExhaustedError(absl::StrCat(
      "rocksdb tier: no room for ", incoming,
      " bytes: the rest of the disk budget is held by leased blocks"));
  for (size_t i : plan.writes) results[i] = full;
  plan = PutPlan();
}

bool RocksDbTier::ChooseVictimsLocked(uint64_t incoming,
                                      uint64_t incoming_records, int64_t now,
                                      PutPlan& plan) {
  uint64_t bytes_after = bytes_;
  uint64_t records_after = index_.size();
  auto over_budget = [&] {
    return bytes_after + incoming > options_.capacity_bytes ||
           records_after + incoming_records > options_.max_records;
  };
  int expired_taken = 0;
  LeaseTable* const leases =
      options_.leases != nullptr && options_.leases->MayHaveLeases()
          ? options_.leases.get()
          : nullptr;
  const absl::Time lease_now = leases != nullptr ? leases->Now() : absl::Time();
  for (const auto& [t, k] : by_age_) {
    const Record& r = index_.at(k);
    const bool expired = ExpiredAt(r, now);
    const bool over = over_budget();
    if (!(expired && expired_taken < kMaxExpiredPerPut) && !over) break;
    // Budget eviction passes over leased records (the TTL does not).
    if (!expired && leases != nullptr && leases->IsLeased(k, lease_now)) {
      continue;
    }
    if (expired) ++expired_taken;
    plan.removed.push_back(k);
    bytes_after -= r.bytes;
    --records_after;
    // A key's own expired record is replaced, not dropped: it stays in the
    // store, so it is counted but not reported.
    if (plan.keys.contains(k)) {
      ++plan.replaced_expired;
      continue;
    }
    plan.drops.push_back(DroppedBlock{
        k, r.bytes, expired ? DropReason::kExpired : DropReason::kEvicted});
  }
  return !over_budget();
}

absl::StatusOr<uint64_t> RocksDbTier::EraseRecord(
    const BlockKey& key, std::optional<int64_t> write_micros,
    absl::string_view what, std::optional<DropReason> reason) {
  uint64_t bytes = 0;
  VQKV_RETURN_IF_ERROR(Mutate(
      [&](Write& w) {
        absl::ReaderMutexLock lock(&mu_);
        auto found = index_.find(key);
        if (found == index_.end() ||
            (write_micros.has_value() &&
             found->second.write_micros != *write_micros)) {
          return absl::OkStatus();  // absent, or replaced
        }
        bytes = found->second.bytes;
        DeleteRecord(w.batch, key);
        w.what = std::string(what);
        return absl::OkStatus();
      },
      [&] {
        EraseFromIndexLocked(key);
        if (reason.has_value() && bytes > 0 && options_.on_drop_committed) {
          options_.on_drop_committed(DroppedBlock{key, bytes, *reason});
        }
      }));
  return bytes;
}

void RocksDbTier::DropRecord(const BlockKey& key, int64_t write_micros,
                             DropReason reason) {
  // On a failed write the record stays indexed; it is still never served
  // (expired records are filtered, corrupt ones fail verification again).
  absl::StatusOr<uint64_t> bytes =
      EraseRecord(key, write_micros, "drop", reason);
  if (!bytes.ok() || *bytes == 0) return;
  switch (reason) {
    case DropReason::kExpired:
      expired_.fetch_add(1);
      break;
    case DropReason::kCorrupt:
      corrupt_dropped_.fetch_add(1);
      break;
    case DropReason::kEvicted:
      evicted_.fetch_add(1);
      break;
  }
  ReportDrops({DroppedBlock{key, *bytes, reason}});
}

absl::StatusOr<SharedBytes> RocksDbTier::Get(const BlockKey& key) {
  Record record;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto found = index_.find(key);
    if (found == index_.end()) {
      return absl::NotFoundError("rocksdb tier: block not found");
    }
    record = found->second;
  }
  if (ExpiredAt(record, NowMicros())) {
    DropRecord(key, record.write_micros, DropReason::kExpired);
    return absl::NotFoundError("rocksdb tier: block expired");
  }
  auto value = std::make_shared<std::string>();
  const rocksdb::Status s =
      Read(&RocksDbTier::blocks_cf_, key.Encode(), value.get());
  if (s.IsNotFound()) {
    return absl::NotFoundError("rocksdb tier: block not found");
  }
  if (s.IsCorruption()) {
    Convert(s, "get").IgnoreError();
    DropRecord(key, record.write_micros, DropReason::kCorrupt);
    return absl::DataLossError(absl::StrCat("rocksdb tier: stored block ",
                                            key.DebugString(), " is corrupt (",
                                            s.ToString(), "); dropped"));
  }
  if (!s.ok()) return Convert(s, absl::StrCat("get ", key.DebugString()));
  absl::Status bad;
  if (value->size() != record.bytes) {
    bad = absl::DataLossError(
        absl::StrCat("size ", value->size(), " != recorded ", record.bytes));
  } else if (options_.verify_blocks) {
    bad = VerifyBlock(reinterpret_cast<const uint8_t*>(value->data()),
                      value->size())
              .status();
  }
  if (!bad.ok()) {
    DropRecord(key, record.write_micros, DropReason::kCorrupt);
    return absl::DataLossError(
        absl::StrCat("rocksdb tier: stored block ", key.DebugString(),
                     " failed verification (", bad.message(), "); dropped"));
  }
  return SharedBytes(std::move(value));
}

bool RocksDbTier::HasRecord(const BlockKey& key) const {
  absl::ReaderMutexLock lock(&mu_);
  return index_.contains(key);
}

bool RocksDbTier::Contains(const BlockKey& key) {
  const int64_t now = NowMicros();
  absl::ReaderMutexLock lock(&mu_);
  auto found = index_.find(key);
  return found != index_.end() && !ExpiredAt(found->second, now);
}

std::vector<bool> RocksDbTier::Contains(absl::Span<const BlockKey> keys) {
  const int64_t now = NowMicros();
  std::vector<bool> out(keys.size());
  absl::ReaderMutexLock lock(&mu_);
  for (size_t i = 0; i < keys.size(); ++i) {
    auto found = index_.find(keys[i]);
    out[i] = found != index_.end() && !ExpiredAt(found->second, now);
  }
  return out;
}

std::optional<RocksDbTier::RecordInfo> RocksDbTier::Stat(const BlockKey& key) {
  const int64_t now = NowMicros();
  absl::ReaderMutexLock lock(&mu_);
  auto found = index_.find(key);
  if (found == index_.end() || ExpiredAt(found->second, now)) {
    return std::nullopt;
  }
  return RecordInfo{found->second.bytes, found->second.chain_position,
                    absl::FromUnixMicros(found->second.write_micros)};
}

bool RocksDbTier::DropIfExpired(const BlockKey& key) {
  int64_t write_micros = 0;
  {
    const int64_t now = NowMicros();
    absl::ReaderMutexLock lock(&mu_);
    auto found = index_.find(key);
    if (found == index_.end() || !ExpiredAt(found->second, now)) return false;
    write_micros = found->second.write_micros;
  }
  DropRecord(key, write_micros, DropReason::kExpired);
  return true;
}

absl::StatusOr<uint64_t> RocksDbTier::Delete(const BlockKey& key) {
  return EraseRecord(key, std::nullopt,
                     absl::StrCat("delete ", key.DebugString()));
}

absl::StatusOr<TierUsage> RocksDbTier::DeleteNamespace(const NamespaceId& ns) {
  std::vector<BlockKey> keys;
  TierUsage removed;
  VQKV_RETURN_IF_ERROR(Mutate(
      [&](Write& w) {
        {
          absl::ReaderMutexLock lock(&mu_);
          for (auto it = index_.lower_bound(BlockKey{ns, BlockHash{}});
               it != index_.end() && it->first.ns == ns; ++it) {
            keys.push_back(it->first);
            removed.bytes += it->second.bytes;
            ++removed.blocks;
          }
        }
        for (const BlockKey& k : keys) DeleteRecord(w.batch, k);
        w.what = absl::StrCat("delete namespace ", ns.ToHex());
        return absl::OkStatus();
      },
      [&] {
        for (const BlockKey& k : keys) EraseFromIndexLocked(k);
      }));
  return removed;
}

TierUsage RocksDbTier::Usage() const {
  absl::ReaderMutexLock lock(&mu_);
  return TierUsage{bytes_, index_.size()};
}

uint64_t RocksDbTier::SweepExpired() {
  if (options_.ttl <= absl::ZeroDuration()) return 0;
  uint64_t total = 0;
  while (true) {
    std::vector<DroppedBlock> drops;
    const absl::Status s = Mutate(
        [&](Write& w) {
          const int64_t now = NowMicros();
          {
            absl::ReaderMutexLock lock(&mu_);
            for (const auto& [t, k] : by_age_) {
              const Record& r = index_.at(k);
              if (!ExpiredAt(r, now) || drops.size() >= kMaxExpiredPerPut) {
                break;
              }
              drops.push_back(DroppedBlock{k, r.bytes, DropReason::kExpired});
            }
          }
          for (const DroppedBlock& d : drops) DeleteRecord(w.batch, d.key);
          w.what = "sweep";
          return absl::OkStatus();
        },
        [&] {
          for (const DroppedBlock& d : drops) {
            EraseFromIndexLocked(d.key);
            if (options_.on_drop_committed) options_.on_drop_committed(d);
          }
        });
    if (!s.ok() || drops.empty()) break;
    expired_.fetch_add(drops.size());
    total += drops.size();
    ReportDrops(drops);
  }
  return total;
}

absl::Status RocksDbTier::Flush() {
  absl::MutexLock write_lock(&write_mu_);
  MaybeResumeLocked();
  absl::ReaderMutexLock db_lock(&db_mu_);
  if (db_ == nullptr) {
    // Name the fault that keeps it closed, not only that it is.
    return Convert(
        rocksdb::Status::IOError(
            "database closed after a fault; reopening failed", reopen_error_),
        "flush");
  }
  rocksdb::Status s = db_->FlushWAL(/*sync=*/true);
  if (!s.ok()) return Convert(s, "flush WAL");
  rocksdb::FlushOptions fo;
  s = db_->Flush(fo, handles_);
  if (!s.ok()) return Convert(s, "flush memtables");
  return absl::OkStatus();
}

absl::Status RocksDbTier::PutCodebook(uint64_t hash, absl::string_view bytes) {
  if (bytes.empty()) {
    return absl::InvalidArgumentError("rocksdb tier: empty codebook");
  }
  return Mutate(
      [&](Write& w) {
        if (catalog_.HasCodebook(hash)) return absl::OkStatus();
        w.batch
            .Put(codebooks_cf_, DiskCatalog::CodebookKey(hash), ToSlice(bytes))
            .PermitUncheckedError();
        w.what = "put codebook";
        return absl::OkStatus();
      },
      [&] { catalog_.AddCodebook(hash); });
}

absl::Status RocksDbTier::PutCodebookRef(uint64_t hash, absl::string_view bytes,
                                         absl::string_view tenant) {
  if (bytes.empty()) {
    return absl::InvalidArgumentError("rocksdb tier: empty codebook");
  }
  std::string size;
  base::PutFixed64(&size, bytes.size());
  return Mutate(
      [&](Write& w) {
        if (!catalog_.HasCodebook(hash)) {
          w.batch
              .Put(codebooks_cf_, DiskCatalog::CodebookKey(hash),
                   ToSlice(bytes))
              .PermitUncheckedError();
        }
        w.batch
            .Put(metadata_cf_, DiskCatalog::CodebookRefKey(hash, tenant),
                 ToSlice(size))
            .PermitUncheckedError();
        w.what = "put codebook";
        return absl::OkStatus();
      },
      [&] {
        catalog_.AddCodebook(hash);
        catalog_.AddCodebookRef(hash, tenant, bytes.size());
      });
}

absl::Status RocksDbTier::DeleteCodebookRef(uint64_t hash,
                                            absl::string_view tenant,
                                            bool delete_file) {
  return Mutate(
      [&](Write& w) {
        w.batch.Delete(metadata_cf_, DiskCatalog::CodebookRefKey(hash, tenant))
            .PermitUncheckedError();
        if (delete_file) {
          w.batch.Delete(codebooks_cf_, DiskCatalog::CodebookKey(hash))
              .PermitUncheckedError();
        }
        w.what = "delete codebook";
        return absl::OkStatus();
      },
      [&] {
        catalog_.EraseCodebookRef(hash, tenant);
        if (delete_file) catalog_.EraseCodebook(hash);
      });
}

absl::Status RocksDbTier::DeleteCodebook(uint64_t hash) {
  return Mutate(
      [&](Write& w) {
        for (const std::string& tenant : catalog_.CodebookTenants(hash)) {
          w.batch
              .Delete(metadata_cf_, DiskCatalog::CodebookRefKey(hash, tenant))
              .PermitUncheckedError();
        }
        w.batch.Delete(codebooks_cf_, DiskCatalog::CodebookKey(hash))
            .PermitUncheckedError();
        w.what = "delete codebook";
        return absl::OkStatus();
      },
      [&] { catalog_.EraseCodebook(hash); });
}

std::vector<CodebookRef> RocksDbTier::CodebookRefs() const {
  return catalog_.CodebookRefs();
}

absl::StatusOr<SharedBytes> RocksDbTier::GetCodebook(uint64_t hash) {
  auto value = std::make_shared<std::string>();
  const rocksdb::Status s = Read(&RocksDbTier::codebooks_cf_,
                                 DiskCatalog::CodebookKey(hash), value.get());
  if (!s.ok()) return Convert(s, "get codebook");
  return SharedBytes(std::move(value));
}

bool RocksDbTier::HasCodebook(uint64_t hash) const {
  return catalog_.HasCodebook(hash);
}

std::vector<uint64_t> RocksDbTier::CodebookHashes() const {
  return catalog_.CodebookHashes();
}

absl::Status RocksDbTier::PutNamespaceOwner(const NamespaceId& ns,
                                            absl::string_view tenant) {
  return Mutate(
      [&](Write& w) {
        w.batch.Put(metadata_cf_, DiskCatalog::OwnerKey(ns), ToSlice(tenant))
            .PermitUncheckedError();
        w.what = "put namespace owner";
        return absl::OkStatus();
      },
      [&] { catalog_.SetOwner(ns, tenant); });
}

absl::Status RocksDbTier::DeleteNamespaceOwner(const NamespaceId& ns) {
  return Mutate(
      [&](Write& w) {
        w.batch.Delete(metadata_cf_, DiskCatalog::OwnerKey(ns))
            .PermitUncheckedError();
        w.what = "delete namespace owner";
        return absl::OkStatus();
      },
      [&] { catalog_.EraseOwner(ns); });
}

absl::flat_hash_map<NamespaceId, NamespaceInfo> RocksDbTier::Namespaces()
    const {
  absl::flat_hash_map<NamespaceId, NamespaceInfo> out;
  for (auto& [ns, tenant] : catalog_.Owners()) {
    out[ns].tenant = std::move(tenant);
    out[ns].has_owner = true;
  }
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [key, record] : index_) {
    NamespaceInfo& info = out[key.ns];
    info.bytes += record.bytes;
    ++info.blocks;
  }
  return out;
}

absl::Status RocksDbTier::TEST_OverwriteBlockValue(const BlockKey& key,
                                                   absl::string_view raw) {
  return Mutate([&](Write& w) {
    if (!Contains(key)) return absl::NotFoundError("not stored");
    w.batch.Put(blocks_cf_, key.Encode(), ToSlice(raw)).PermitUncheckedError();
    w.what = "test overwrite";
    return absl::OkStatus();
  });
}

absl::Status RocksDbTier::TEST_OverwriteCodebookValue(uint64_t hash,
                                                      absl::string_view raw) {
  return Mutate([&](Write& w) {
    if (!catalog_.HasCodebook(hash)) return absl::NotFoundError("not stored");
    w.batch.Put(codebooks_cf_, DiskCatalog::CodebookKey(hash), ToSlice(raw))
        .PermitUncheckedError();
    w.what = "test overwrite";
    return absl::OkStatus();
  });
}

}  // namespace vqkv::storage
