#include "storage/codebook_registry.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/codebook_set.h"
#include "storage/rocksdb_tier.h"

namespace vqkv::storage {

absl::Status VerifyCodebookFile(uint64_t hash, absl::string_view bytes) {
  absl::StatusOr<CodebookSet> set =
      CodebookSet::Deserialize(std::string_view(bytes.data(), bytes.size()));
  if (!set.ok()) {
    return absl::DataLossError(
        absl::StrCat("codebook file does not parse: ", set.status().message()));
  }
  absl::StatusOr<uint64_t> content = set->Hash();
  if (!content.ok()) {
    return absl::DataLossError(absl::StrCat("codebook file has no hash: ",
                                            content.status().message()));
  }
  if (*content != hash) {
    return absl::DataLossError(absl::StrCat("codebook file's content hash is ",
                                            absl::Hex(*content), ", not ",
                                            absl::Hex(hash)));
  }
  return absl::OkStatus();
}

CodebookRegistry::CodebookRegistry(CodebookRegistryOptions options)
    : options_(std::move(options)) {
  if (options_.disk == nullptr) return;
  absl::MutexLock lock(&mu_);
  for (uint64_t hash : options_.disk->CodebookHashes()) hashes_.insert(hash);
  for (const CodebookRef& ref : options_.disk->CodebookRefs()) {
    AddRefLocked(ref.hash, ref.tenant, ref.bytes);
  }
}

void CodebookRegistry::NoteDiskFault(const absl::Status& s,
                                     absl::string_view what) const {
  if (options_.on_disk_fault) options_.on_disk_fault(s, what);
}

void CodebookRegistry::AddRefLocked(uint64_t hash, absl::string_view tenant,
                                    uint64_t bytes) {
  auto [it, added] = refs_[hash].try_emplace(std::string(tenant), bytes);
  if (!added) return;
  CodebookUsage& u = usage_[it->first];
  ++u.sets;
  u.bytes += bytes;
}

void CodebookRegistry::ForgetLocked(uint64_t hash) {
  hashes_.erase(hash);
  UncacheLocked(hash);
  auto it = refs_.find(hash);
  if (it == refs_.end()) return;
  for (const auto& [tenant, bytes] : it->second) {
    CodebookUsage& u = usage_[tenant];
    u.sets -= std::min<uint64_t>(u.sets, 1);
    u.bytes -= std::min(u.bytes, bytes);
  }
  refs_.erase(it);
}

absl::Status CodebookRegistry::Put(absl::string_view tenant, uint64_t hash,
                                   absl::string_view bytes) {
  if (hash == 0) {
    return absl::InvalidArgumentError("codebook hash 0 is reserved for none");
  }
  if (bytes.empty()) return absl::InvalidArgumentError("empty codebook file");
  absl::MutexLock write_lock(&write_mu_);
  {
    absl::ReaderMutexLock lock(&mu_);
    auto refs = refs_.find(hash);
    if (refs != refs_.end() && refs->second.contains(tenant)) {
      return absl::OkStatus();  // idempotent
    }
    auto u = usage_.find(tenant);
    const CodebookUsage used = u == usage_.end() ? CodebookUsage() : u->second;
    const CodebookQuota& q = options_.quota;
    if (q.max_sets != 0 && used.sets + 1 > q.max_sets) {
      return absl::ResourceExhaustedError(
          absl::StrCat("codebook quota exceeded: the tenant holds ", used.sets,
                       " codebook sets, the limit is ", q.max_sets));
    }
    if (q.max_bytes != 0 && used.bytes + bytes.size() > q.max_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("codebook quota exceeded: ", used.bytes, " + ",
                       bytes.size(), " > ", q.max_bytes, " bytes"));
    }
  }
  if (options_.disk != nullptr) {
    absl::Status s = options_.disk->PutCodebookRef(hash, bytes, tenant);
    if (!s.ok()) {
      NoteDiskFault(s, "put codebook");
      return s;
    }
  }
  absl::MutexLock lock(&mu_);
  AddRefLocked(hash, tenant, bytes.size());
  if (hashes_.insert(hash).second) {
    CacheLocked(hash, std::make_shared<const std::string>(bytes));
  }
  return absl::OkStatus();
}

absl::Status CodebookRegistry::Delete(absl::string_view tenant, uint64_t hash) {
  absl::MutexLock write_lock(&write_mu_);
  bool last = false;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto refs = refs_.find(hash);
    if (refs == refs_.end() || !refs->second.contains(tenant)) {
      return absl::NotFoundError(absl::StrCat("codebook set ", absl::Hex(hash),
                                              " not registered by the tenant"));
    }
    last = refs->second.size() == 1;
  }
  if (options_.disk != nullptr) {
    absl::Status s = options_.disk->DeleteCodebookRef(hash, tenant, last);
    if (!s.ok()) {
      NoteDiskFault(s, "delete codebook");
      return s;
    }
  }
  absl::MutexLock lock(&mu_);
  if (last) {
    ForgetLocked(hash);
    return absl::OkStatus();
  }
  auto refs = refs_.find(hash);
  auto ref = refs->second.find(tenant);
  CodebookUsage& u = usage_[ref->first];
  u.sets -= std::min<uint64_t>(u.sets, 1);
  u.bytes -= std::min(u.bytes, ref->second);
  refs->second.erase(ref);
  return absl::OkStatus();
}

absl::StatusOr<SharedBytes> CodebookRegistry::Get(uint64_t hash) {
  {
    absl::MutexLock lock(&mu_);
    if (!hashes_.contains(hash)) {
      return absl::NotFoundError(
          absl::StrCat("codebook set ", absl::Hex(hash), " not registered"));
    }
    auto it = cache_.find(hash);
    if (it != cache_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      return it->second.bytes;
    }
  }
  if (options_.disk == nullptr) {
    return absl::NotFoundError("codebook set not found");
  }
  absl::StatusOr<SharedBytes> got = options_.disk->GetCodebook(hash);
  absl::Status bad;
  if (!got.ok()) {
    if (!absl::IsNotFound(got.status())) {
      NoteDiskFault(got.status(), "get codebook");
    }
    if (!absl::IsDataLoss(got.status())) return got.status();
    bad = got.status();
  } else if (options_.verify) {
    bad = options_.verify(hash, **got);
  }
  if (!bad.ok()) {
    // Never served: drop the file and its references (the set can be put
    // again).
    absl::MutexLock write_lock(&write_mu_);
    absl::Status dropped = options_.disk->DeleteCodebook(hash);
    if (!dropped.ok()) NoteDiskFault(dropped, "drop corrupt codebook");
    absl::MutexLock lock(&mu_);
    ForgetLocked(hash);
    ++corrupt_dropped_;
    return absl::DataLossError(
        absl::StrCat("stored codebook set ", absl::Hex(hash),
                     " failed verification (", bad.message(), "); dropped"));
  }
  absl::MutexLock lock(&mu_);
  if (hashes_.contains(hash)) CacheLocked(hash, *got);
  return got;
}

void CodebookRegistry::UncacheLocked(uint64_t hash) {
  auto it = cache_.find(hash);
  if (it == cache_.end()) return;
  cached_bytes_ -= it->second.bytes->size();
  lru_.erase(it->second.lru);
  cache_.erase(it);
}

void CodebookRegistry::CacheLocked(uint64_t hash, SharedBytes bytes) {
  if (cache_.contains(hash)) return;
  const uint64_t size = bytes->size();
  if (options_.disk != nullptr) {
    if (size > options_.cache_bytes) return;
    while (cached_bytes_ + size > options_.cache_bytes) {
      UncacheLocked(lru_.back());
    }
  }
  lru_.push_front(hash);
  cached_bytes_ += size;
  cache_.emplace(hash, Cached{std::move(bytes), lru_.begin()});
}

bool CodebookRegistry::Has(uint64_t hash) const {
  absl::ReaderMutexLock lock(&mu_);
  return hashes_.contains(hash);
}

uint64_t CodebookRegistry::size() const {
  absl::ReaderMutexLock lock(&mu_);
  return hashes_.size();
}

CodebookUsage CodebookRegistry::Usage(absl::string_view tenant) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = usage_.find(tenant);
  return it == usage_.end() ? CodebookUsage() : it->second;
}

uint64_t CodebookRegistry::corrupt_dropped() const {
  absl::ReaderMutexLock lock(&mu_);
  return corrupt_dropped_;
}

bool CodebookRegistry::IsCached(uint64_t hash) const {
  absl::ReaderMutexLock lock(&mu_);
  return cache_.contains(hash);
}

uint64_t CodebookRegistry::cached_bytes() const {
  absl::ReaderMutexLock lock(&mu_);
  return cached_bytes_;
}

}  // namespace vqkv::storage
