#include "storage/codebook_registry.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "storage/rocksdb_tier.h"

namespace vqkv::storage {

CodebookRegistry::CodebookRegistry(CodebookRegistryOptions options)
    : options_(std::move(options)) {
  if (options_.disk == nullptr) return;
  absl::MutexLock lock(&mu_);
  for (uint64_t hash : options_.disk->CodebookHashes()) hashes_.insert(hash);
}

void CodebookRegistry::NoteDiskFault(const absl::Status& s,
                                     absl::string_view what) const {
  if (options_.on_disk_fault) options_.on_disk_fault(s, what);
}

absl::Status CodebookRegistry::Put(uint64_t hash, absl::string_view bytes) {
  if (hash == 0) {
    return absl::InvalidArgumentError("codebook hash 0 is reserved for none");
  }
  if (bytes.empty()) return absl::InvalidArgumentError("empty codebook file");
  if (Has(hash)) return absl::OkStatus();
  if (options_.disk != nullptr) {
    absl::Status s = options_.disk->PutCodebook(hash, bytes);
    if (!s.ok()) {
      NoteDiskFault(s, "put codebook");
      return s;
    }
  }
  auto shared = std::make_shared<const std::string>(bytes);
  absl::MutexLock lock(&mu_);
  hashes_.insert(hash);
  CacheLocked(hash, std::move(shared));
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
  if (!got.ok()) {
    if (!absl::IsNotFound(got.status())) {
      NoteDiskFault(got.status(), "get codebook");
    }
    return got.status();
  }
  absl::MutexLock lock(&mu_);
  CacheLocked(hash, *got);
  return got;
}

void CodebookRegistry::CacheLocked(uint64_t hash, SharedBytes bytes) {
  if (cache_.contains(hash)) return;
  const uint64_t size = bytes->size();
  if (options_.disk != nullptr) {
    if (size > options_.cache_bytes) return;
    while (cached_bytes_ + size > options_.cache_bytes) {
      auto victim = cache_.find(lru_.back());
      cached_bytes_ -= victim->second.bytes->size();
      cache_.erase(victim);
      lru_.pop_back();
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

bool CodebookRegistry::IsCached(uint64_t hash) const {
  absl::ReaderMutexLock lock(&mu_);
  return cache_.contains(hash);
}

uint64_t CodebookRegistry::cached_bytes() const {
  absl::ReaderMutexLock lock(&mu_);
  return cached_bytes_;
}

}  // namespace vqkv::storage
