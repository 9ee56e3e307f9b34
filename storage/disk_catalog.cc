#include "storage/disk_catalog.h"

#include "absl/strings/str_cat.h"
#include "base/coding.h"

namespace vqkv::storage {
namespace {

constexpr char kOwnerTag = 'n';
constexpr size_t kCodebookKeyBytes = 8;

}  // namespace

std::string DiskCatalog::CodebookKey(uint64_t hash) {
  std::string out(kCodebookKeyBytes, '\0');
  base::EncodeBigEndian64(out.data(), hash);
  return out;
}

std::string DiskCatalog::OwnerKey(const NamespaceId& ns) {
  return absl::StrCat(absl::string_view(&kOwnerTag, 1), ns.view());
}

void DiskCatalog::Clear() {
  absl::MutexLock lock(&mu_);
  codebooks_.clear();
  owners_.clear();
}

void DiskCatalog::LoadCodebookKey(absl::string_view key) {
  if (key.size() != kCodebookKeyBytes) return;
  AddCodebook(base::DecodeBigEndian64(key.data()));
}

bool DiskCatalog::LoadOwner(absl::string_view key, absl::string_view value) {
  if (key.size() != 1 + NamespaceId::kSize || key[0] != kOwnerTag) {
    return false;
  }
  auto ns = NamespaceId::FromBytes(key.substr(1));
  if (ns.ok()) SetOwner(*ns, value);
  return true;
}

bool DiskCatalog::HasCodebook(uint64_t hash) const {
  absl::ReaderMutexLock lock(&mu_);
  return codebooks_.contains(hash);
}

void DiskCatalog::AddCodebook(uint64_t hash) {
  absl::MutexLock lock(&mu_);
  codebooks_.insert(hash);
}

std::vector<uint64_t> DiskCatalog::CodebookHashes() const {
  absl::ReaderMutexLock lock(&mu_);
  return std::vector<uint64_t>(codebooks_.begin(), codebooks_.end());
}

void DiskCatalog::SetOwner(const NamespaceId& ns, absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  owners_[ns] = std::string(tenant);
}

void DiskCatalog::EraseOwner(const NamespaceId& ns) {
  absl::MutexLock lock(&mu_);
  owners_.erase(ns);
}

absl::flat_hash_map<NamespaceId, std::string> DiskCatalog::Owners() const {
  absl::ReaderMutexLock lock(&mu_);
  return owners_;
}

}  // namespace vqkv::storage
