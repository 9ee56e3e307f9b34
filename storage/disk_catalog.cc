#include "storage/disk_catalog.h"

#include "absl/strings/str_cat.h"
#include "base/coding.h"

namespace vqkv::storage {
namespace {

constexpr char kOwnerTag = 'n';
constexpr char kCodebookRefTag = 'c';
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

std::string DiskCatalog::CodebookRefKey(uint64_t hash,
                                        absl::string_view tenant) {
  std::string out(1 + kCodebookKeyBytes, kCodebookRefTag);
  base::EncodeBigEndian64(out.data() + 1, hash);
  out.append(tenant.data(), tenant.size());
  return out;
}

void DiskCatalog::Clear() {
  absl::MutexLock lock(&mu_);
  codebooks_.clear();
  owners_.clear();
  refs_.clear();
}

bool DiskCatalog::LoadCodebookRef(absl::string_view key,
                                  absl::string_view value) {
  if (key.size() < 1 + kCodebookKeyBytes || key[0] != kCodebookRefTag) {
    return false;
  }
  if (value.size() != 8) return true;  // not ours to interpret; skip
  AddCodebookRef(base::DecodeBigEndian64(key.data() + 1),
                 key.substr(1 + kCodebookKeyBytes),
                 base::DecodeFixed64(value.data()));
  return true;
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

void DiskCatalog::EraseCodebook(uint64_t hash) {
  absl::MutexLock lock(&mu_);
  codebooks_.erase(hash);
  refs_.erase(hash);
}

void DiskCatalog::AddCodebookRef(uint64_t hash, absl::string_view tenant,
                                 uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  refs_[hash][std::string(tenant)] = bytes;
}

void DiskCatalog::EraseCodebookRef(uint64_t hash, absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  auto it = refs_.find(hash);
  if (it == refs_.end()) return;
  it->second.erase(std::string(tenant));
  if (it->second.empty()) refs_.erase(it);
}

std::vector<CodebookRef> DiskCatalog::CodebookRefs() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<CodebookRef> out;
  for (const auto& [hash, tenants] : refs_) {
    // A reference to a file that is not stored (lost) is no reference.
    if (!codebooks_.contains(hash)) continue;
    for (const auto& [tenant, bytes] : tenants) {
      out.push_back(CodebookRef{hash, tenant, bytes});
    }
  }
  return out;
}

std::vector<std::string> DiskCatalog::CodebookTenants(uint64_t hash) const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::string> out;
  auto it = refs_.find(hash);
  if (it == refs_.end()) return out;
  for (const auto& [tenant, bytes] : it->second) out.push_back(tenant);
  return out;
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
