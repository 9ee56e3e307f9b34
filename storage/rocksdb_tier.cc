#include "storage/rocksdb_tier.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
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
constexpr char kNamespaceTag = 'n';
constexpr size_t kRecordBytes = 24;
// Expired records removed per Put at most (the rest go lazily or by sweep).
constexpr int kMaxExpiredPerPut = 1024;

void PutFixed64(char* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
}
uint64_t GetFixed64(const char* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) {
    v |= uint64_t{static_cast<uint8_t>(in[i])} << (8 * i);
  }
  return v;
}

std::string BlockRecordKey(const BlockKey& key) {
  std::string out(1 + BlockKey::kEncodedSize, kBlockRecordTag);
  key.EncodeTo(out.data() + 1);
  return out;
}

std::string NamespaceKey(const NamespaceId& ns) {
  return absl::StrCat(absl::string_view(&kNamespaceTag, 1), ns.view());
}

std::string CodebookKey(uint64_t hash) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(hash >> (56 - 8 * i));
  return out;
}

uint64_t DecodeCodebookKey(absl::string_view k) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(k[i]);
  return v;
}

rocksdb::Slice ToSlice(absl::string_view s) {
  return rocksdb::Slice(s.data(), s.size());
}

}  // namespace

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
  std::unique_ptr<RocksDbTier> tier(new RocksDbTier(std::move(options)));
  try {
    absl::MutexLock write_lock(&tier->write_mu_);
    absl::MutexLock db_lock(&tier->db_mu_);
    if (absl::Status s = tier->OpenDb(); !s.ok()) return s;
    if (absl::Status s = tier->LoadIndex(); !s.ok()) return s;
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
  codebooks_.clear();
  owners_.clear();
  {
    std::unique_ptr<rocksdb::Iterator> it(
        db_->NewIterator(rocksdb::ReadOptions(), metadata_cf_));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const rocksdb::Slice k = it->key();
      const rocksdb::Slice v = it->value();
      if (k.size() == 1 + BlockKey::kEncodedSize && k[0] == kBlockRecordTag &&
          v.size() == kRecordBytes) {
        auto key = BlockKey::Decode(
            absl::string_view(k.data() + 1, BlockKey::kEncodedSize));
        if (!key.ok()) continue;
        Record r;
        r.write_micros = static_cast<int64_t>(GetFixed64(v.data()));
        r.bytes = GetFixed64(v.data() + 8);
        r.chain_position = static_cast<uint32_t>(GetFixed64(v.data() + 16));
        index_[*key] = r;
        by_age_.emplace(r.write_micros, *key);
        bytes_ += r.bytes;
      } else if (k.size() == 1 + NamespaceId::kSize && k[0] == kNamespaceTag) {
        auto ns = NamespaceId::FromBytes(
            absl::string_view(k.data() + 1, NamespaceId::kSize));
        if (ns.ok()) owners_[*ns] = v.ToString();
      }
    }
    if (!it->status().ok()) return Convert(it->status(), "loading metadata");
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(
        db_->NewIterator(rocksdb::ReadOptions(), codebooks_cf_));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (it->key().size() == 8) {
        codebooks_.insert(DecodeCodebookKey(
            absl::string_view(it->key().data(), it->key().size())));
      }
    }
    if (!it->status().ok()) return Convert(it->status(), "loading codebooks");
  }
  return absl::OkStatus();
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
  std::vector<absl::Status> results(puts.size());
  // Indices of the puts this batch writes (valid, not already held, first
  // occurrence of their key).
  std::vector<size_t> writes;
  uint64_t incoming = 0;
  for (size_t i = 0; i < puts.size(); ++i) {
    const absl::string_view block = puts[i].block;
    if (block.empty()) {
      results[i] = absl::InvalidArgumentError("rocksdb tier: empty block");
    } else if (block.size() > options_.capacity_bytes) {
      results[i] = absl::ResourceExhaustedError(
          absl::StrCat("rocksdb tier: a block of ", block.size(),
                       " bytes is larger than the disk budget of ",
                       options_.capacity_bytes, " bytes"));
    }
  }
  std::vector<DroppedBlock> drops;
  {
    absl::MutexLock write_lock(&write_mu_);
    MaybeResumeLocked();
    const int64_t now = NowMicros();
    rocksdb::WriteBatch batch;
    std::vector<BlockKey> removed;
    uint64_t expired_here = 0;
    {
      absl::ReaderMutexLock lock(&mu_);
      absl::flat_hash_set<BlockKey> in_batch;
      for (size_t i = 0; i < puts.size(); ++i) {
        if (!results[i].ok()) continue;
        auto found = index_.find(puts[i].key);
        if (found != index_.end() && !ExpiredAt(found->second, now)) {
          continue;  // idempotent
        }
        if (!in_batch.insert(puts[i].key).second) continue;  // repeated key
        writes.push_back(i);
        incoming += puts[i].block.size();
      }
      if (writes.empty()) return results;
      // Make room for the whole batch at once, oldest records first. A batch
      // larger than the budget evicts everything older and keeps only what
      // fits, newest last (the caller sees kResourceExhausted for the rest).
      while (incoming > options_.capacity_bytes) {
        const size_t i = writes.front();
        incoming -= puts[i].block.size();
        results[i] = absl::ResourceExhaustedError(
            "rocksdb tier: the batch is larger than the disk budget");
        writes.erase(writes.begin());
      }
      uint64_t bytes_after = bytes_;
      int expired_taken = 0;
      LeaseTable* const leases =
          options_.leases != nullptr && options_.leases->MayHaveLeases()
              ? options_.leases.get()
              : nullptr;
      const absl::Time lease_now =
          leases != nullptr ? leases->Now() : absl::Time();
      for (const auto& [t, k] : by_age_) {
        const Record& r = index_.at(k);
        const bool expired = ExpiredAt(r, now);
        const bool over = bytes_after + incoming > options_.capacity_bytes;
        if (!(expired && expired_taken < kMaxExpiredPerPut) && !over) break;
        // Budget eviction passes over leased records (the TTL does not).
        if (!expired && leases != nullptr && leases->IsLeased(k, lease_now)) {
          continue;
        }
        if (expired) ++expired_taken;
        removed.push_back(k);
        bytes_after -= r.bytes;
        // A key's own expired record is replaced, not dropped: it stays in
        // the store, so it is counted but not reported.
        if (in_batch.contains(k)) {
          ++expired_here;
          continue;
        }
        drops.push_back(DroppedBlock{
            k, r.bytes, expired ? DropReason::kExpired : DropReason::kEvicted});
      }
      if (bytes_after + incoming > options_.capacity_bytes) {
        // Only leased records are left to evict: a lease is never broken
        // for room. Nothing is written or removed (expired records go on a
        // later put or sweep).
        const absl::Status full = absl::ResourceExhaustedError(absl::StrCat(
            "rocksdb tier: no room for ", incoming,
            " bytes: the rest of the disk budget is held by leased blocks"));
        for (size_t i : writes) results[i] = full;
        return results;
      }
    }
    for (const BlockKey& k : removed) {
      const std::string encoded = k.Encode();
      batch.Delete(blocks_cf_, encoded).PermitUncheckedError();
      batch.Delete(metadata_cf_, BlockRecordKey(k)).PermitUncheckedError();
    }
    std::vector<Record> records;
    records.reserve(writes.size());
    for (size_t i : writes) {
      const BlockPut& p = puts[i];
      Record record{now, p.block.size(), p.chain_position};
      char value[kRecordBytes];
      PutFixed64(value, static_cast<uint64_t>(record.write_micros));
      PutFixed64(value + 8, record.bytes);
      PutFixed64(value + 16, record.chain_position);
      // Block and record in one batch: both or neither reach the WAL.
      batch.Put(blocks_cf_, p.key.Encode(), ToSlice(p.block))
          .PermitUncheckedError();
      batch
          .Put(metadata_cf_, BlockRecordKey(p.key),
               rocksdb::Slice(value, kRecordBytes))
          .PermitUncheckedError();
      records.push_back(record);
    }

    // One write (one fsync in sync mode) for the whole batch.
    rocksdb::Status s = WriteLocked(&batch);
    if (!s.ok()) {
      const absl::Status err = Convert(
          s, writes.size() == 1
                 ? absl::StrCat("put ", puts[writes[0]].key.DebugString())
                 : absl::StrCat("put of ", writes.size(), " blocks"));
      for (size_t i : writes) results[i] = err;
      return results;
    }
    absl::MutexLock lock(&mu_);
    for (const BlockKey& k : removed) EraseFromIndexLocked(k);
    for (size_t j = 0; j < writes.size(); ++j) {
      const BlockKey& key = puts[writes[j]].key;
      index_[key] = records[j];
      by_age_.emplace(records[j].write_micros, key);
      bytes_ += records[j].bytes;
    }
    for (const DroppedBlock& d : drops) {
      (d.reason == DropReason::kExpired ? expired_ : evicted_).fetch_add(1);
    }
    expired_.fetch_add(expired_here);
  }
  ReportDrops(drops);
  return results;
}

void RocksDbTier::DropRecord(const BlockKey& key, int64_t write_micros,
                             DropReason reason) {
  uint64_t bytes = 0;
  {
    absl::MutexLock write_lock(&write_mu_);
    MaybeResumeLocked();
    {
      absl::ReaderMutexLock lock(&mu_);
      auto found = index_.find(key);
      if (found == index_.end() || found->second.write_micros != write_micros) {
        return;  // already gone or replaced
      }
      bytes = found->second.bytes;
    }
    rocksdb::WriteBatch batch;
    batch.Delete(blocks_cf_, key.Encode()).PermitUncheckedError();
    batch.Delete(metadata_cf_, BlockRecordKey(key)).PermitUncheckedError();
    rocksdb::Status s = WriteLocked(&batch);
    if (!s.ok()) {
      // The record stays indexed; it is still never served (expired records
      // are filtered, corrupt ones fail verification again).
      Convert(s, "drop").IgnoreError();
      return;
    }
    absl::MutexLock lock(&mu_);
    EraseFromIndexLocked(key);
  }
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
  ReportDrops({DroppedBlock{key, bytes, reason}});
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
  rocksdb::Status s;
  {
    absl::ReaderMutexLock db_lock(&db_mu_);
    s = db_ == nullptr ? rocksdb::Status::IOError("database closed")
                       : db_->Get(rocksdb::ReadOptions(), blocks_cf_,
                                  key.Encode(), value.get());
  }
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
  absl::MutexLock write_lock(&write_mu_);
  MaybeResumeLocked();
  uint64_t bytes = 0;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto found = index_.find(key);
    if (found == index_.end()) return uint64_t{0};
    bytes = found->second.bytes;
  }
  rocksdb::WriteBatch batch;
  batch.Delete(blocks_cf_, key.Encode()).PermitUncheckedError();
  batch.Delete(metadata_cf_, BlockRecordKey(key)).PermitUncheckedError();
  rocksdb::Status s = WriteLocked(&batch);
  if (!s.ok()) return Convert(s, absl::StrCat("delete ", key.DebugString()));
  absl::MutexLock lock(&mu_);
  EraseFromIndexLocked(key);
  return bytes;
}

absl::StatusOr<TierUsage> RocksDbTier::DeleteNamespace(const NamespaceId& ns) {
  absl::MutexLock write_lock(&write_mu_);
  MaybeResumeLocked();
  std::vector<BlockKey> keys;
  TierUsage removed;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (auto it = index_.lower_bound(BlockKey{ns, BlockHash{}});
         it != index_.end() && it->first.ns == ns; ++it) {
      keys.push_back(it->first);
      removed.bytes += it->second.bytes;
      ++removed.blocks;
    }
  }
  if (keys.empty()) return removed;
  rocksdb::WriteBatch batch;
  for (const BlockKey& k : keys) {
    batch.Delete(blocks_cf_, k.Encode()).PermitUncheckedError();
    batch.Delete(metadata_cf_, BlockRecordKey(k)).PermitUncheckedError();
  }
  rocksdb::Status s = WriteLocked(&batch);
  if (!s.ok()) {
    return Convert(s, absl::StrCat("delete namespace ", ns.ToHex()));
  }
  absl::MutexLock lock(&mu_);
  for (const BlockKey& k : keys) EraseFromIndexLocked(k);
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
    {
      absl::MutexLock write_lock(&write_mu_);
      MaybeResumeLocked();
      const int64_t now = NowMicros();
      {
        absl::ReaderMutexLock lock(&mu_);
        for (const auto& [t, k] : by_age_) {
          const Record& r = index_.at(k);
          if (!ExpiredAt(r, now) || drops.size() >= kMaxExpiredPerPut) break;
          drops.push_back(DroppedBlock{k, r.bytes, DropReason::kExpired});
        }
      }
      if (drops.empty()) break;
      rocksdb::WriteBatch batch;
      for (const DroppedBlock& d : drops) {
        batch.Delete(blocks_cf_, d.key.Encode()).PermitUncheckedError();
        batch.Delete(metadata_cf_, BlockRecordKey(d.key))
            .PermitUncheckedError();
      }
      rocksdb::Status s = WriteLocked(&batch);
      if (!s.ok()) {
        Convert(s, "sweep").IgnoreError();
        break;
      }
      absl::MutexLock lock(&mu_);
      for (const DroppedBlock& d : drops) EraseFromIndexLocked(d.key);
    }
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
    return Convert(rocksdb::Status::IOError("database closed"), "flush");
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
  absl::MutexLock write_lock(&write_mu_);
  MaybeResumeLocked();
  {
    absl::ReaderMutexLock lock(&mu_);
    if (codebooks_.contains(hash)) return absl::OkStatus();
  }
  rocksdb::WriteBatch batch;
  batch.Put(codebooks_cf_, CodebookKey(hash), ToSlice(bytes))
      .PermitUncheckedError();
  rocksdb::Status s = WriteLocked(&batch);
  if (!s.ok()) return Convert(s, "put codebook");
  absl::MutexLock lock(&mu_);
  codebooks_.insert(hash);
  return absl::OkStatus();
}

absl::StatusOr<SharedBytes> RocksDbTier::GetCodebook(uint64_t hash) {
  auto value = std::make_shared<std::string>();
  rocksdb::Status s;
  {
    absl::ReaderMutexLock db_lock(&db_mu_);
    s = db_ == nullptr ? rocksdb::Status::IOError("database closed")
                       : db_->Get(rocksdb::ReadOptions(), codebooks_cf_,
                                  CodebookKey(hash), value.get());
  }
  if (!s.ok()) return Convert(s, "get codebook");
  return SharedBytes(std::move(value));
}

bool RocksDbTier::HasCodebook(uint64_t hash) const {
  absl::ReaderMutexLock lock(&mu_);
  return codebooks_.contains(hash);
}

std::vector<uint64_t> RocksDbTier::CodebookHashes() const {
  absl::ReaderMutexLock lock(&mu_);
  return std::vector<uint64_t>(codebooks_.begin(), codebooks_.end());
}

absl::Status RocksDbTier::PutNamespaceOwner(const NamespaceId& ns,
                                            absl::string_view tenant) {
  absl::MutexLock write_lock(&write_mu_);
  MaybeResumeLocked();
  rocksdb::WriteBatch batch;
  batch.Put(metadata_cf_, NamespaceKey(ns), ToSlice(tenant))
      .PermitUncheckedError();
  rocksdb::Status s = WriteLocked(&batch);
  if (!s.ok()) return Convert(s, "put namespace owner");
  absl::MutexLock lock(&mu_);
  owners_[ns] = std::string(tenant);
  return absl::OkStatus();
}

absl::Status RocksDbTier::DeleteNamespaceOwner(const NamespaceId& ns) {
  absl::MutexLock write_lock(&write_mu_);
  MaybeResumeLocked();
  rocksdb::WriteBatch batch;
  batch.Delete(metadata_cf_, NamespaceKey(ns)).PermitUncheckedError();
  rocksdb::Status s = WriteLocked(&batch);
  if (!s.ok()) return Convert(s, "delete namespace owner");
  absl::MutexLock lock(&mu_);
  owners_.erase(ns);
  return absl::OkStatus();
}

absl::flat_hash_map<NamespaceId, NamespaceInfo> RocksDbTier::Namespaces()
    const {
  absl::flat_hash_map<NamespaceId, NamespaceInfo> out;
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [ns, tenant] : owners_) {
    out[ns].tenant = tenant;
    out[ns].has_owner = true;
  }
  for (const auto& [key, record] : index_) {
    NamespaceInfo& info = out[key.ns];
    info.bytes += record.bytes;
    ++info.blocks;
  }
  return out;
}

absl::Status RocksDbTier::TEST_OverwriteBlockValue(const BlockKey& key,
                                                   absl::string_view raw) {
  absl::MutexLock write_lock(&write_mu_);
  MaybeResumeLocked();
  if (!Contains(key)) return absl::NotFoundError("not stored");
  rocksdb::WriteBatch batch;
  batch.Put(blocks_cf_, key.Encode(), ToSlice(raw)).PermitUncheckedError();
  return Convert(WriteLocked(&batch), "test overwrite");
}

}  // namespace vqkv::storage
