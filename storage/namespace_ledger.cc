#include "storage/namespace_ledger.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vqkv::storage {
namespace {

// What callers see of a namespace: owner and usage.
NamespaceInfo Visible(const NamespaceInfo& state) {
  return NamespaceInfo{state.tenant, state.bytes, state.blocks};
}

}  // namespace

NamespaceLedger::NamespaceLedger(
    uint64_t default_quota,
    absl::flat_hash_map<std::string, uint64_t> tenant_quotas)
    : default_quota_(default_quota), quotas_(std::move(tenant_quotas)) {}

void NamespaceLedger::Load(
    const absl::flat_hash_map<NamespaceId, NamespaceInfo>& on_disk) {
  absl::MutexLock lock(&mu_);
  for (const auto& [ns, info] : on_disk) {
    NamespaceInfo& state = namespaces_[ns];
    state = info;
    state.has_owner = info.has_owner || info.blocks == 0;
    if (state.has_owner) usage_[state.tenant] += state.bytes;
  }
}

bool NamespaceLedger::OwnedBy(absl::string_view tenant,
                              const NamespaceId& ns) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = namespaces_.find(ns);
  return it != namespaces_.end() && it->second.has_owner &&
         it->second.tenant == tenant;
}

absl::StatusOr<bool> NamespaceLedger::Claim(absl::string_view tenant,
                                            const NamespaceId& ns) {
  absl::MutexLock lock(&mu_);
  NamespaceInfo& state = namespaces_[ns];
  if (state.has_owner) {
    if (state.tenant != tenant) {
      return absl::PermissionDeniedError("namespace belongs to another tenant");
    }
    return false;
  }
  state.has_owner = true;
  state.tenant = std::string(tenant);
  usage_[state.tenant] += state.bytes;
  return true;
}

absl::Status NamespaceLedger::Charge(absl::string_view tenant,
                                     const NamespaceId& ns, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  const uint64_t quota = QuotaLocked(tenant);
  const uint64_t used = usage_[std::string(tenant)];
  if (quota != 0 && used + bytes > quota) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant quota exceeded: ", used, " + ", bytes, " > ", quota, " bytes"));
  }
  NamespaceInfo& state = namespaces_[ns];
  state.bytes += bytes;
  ++state.blocks;
  if (state.has_owner) usage_[state.tenant] += bytes;
  return absl::OkStatus();
}

void NamespaceLedger::Uncharge(const NamespaceId& ns, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end()) return;
  NamespaceInfo& state = it->second;
  const uint64_t b = std::min(bytes, state.bytes);
  state.bytes -= b;
  if (state.blocks > 0) --state.blocks;
  if (state.has_owner) {
    uint64_t& usage = usage_[state.tenant];
    usage -= std::min(usage, b);
  }
}

std::optional<NamespaceInfo> NamespaceLedger::Remove(const NamespaceId& ns) {
  absl::MutexLock lock(&mu_);
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end()) return std::nullopt;
  const NamespaceInfo state = it->second;
  namespaces_.erase(it);
  if (state.has_owner) {
    uint64_t& usage = usage_[state.tenant];
    usage -= std::min(usage, state.bytes);
  }
  return Visible(state);
}

absl::StatusOr<NamespaceInfo> NamespaceLedger::Info(
    const NamespaceId& ns) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end() || !it->second.has_owner) {
    return absl::NotFoundError("namespace not found");
  }
  return Visible(it->second);
}

void NamespaceLedger::SetQuota(absl::string_view tenant, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  quotas_[std::string(tenant)] = bytes;
}

uint64_t NamespaceLedger::Quota(absl::string_view tenant) const {
  absl::ReaderMutexLock lock(&mu_);
  return QuotaLocked(tenant);
}

uint64_t NamespaceLedger::QuotaLocked(absl::string_view tenant) const {
  auto it = quotas_.find(tenant);
  return it != quotas_.end() ? it->second : default_quota_;
}

uint64_t NamespaceLedger::Usage(absl::string_view tenant) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = usage_.find(tenant);
  return it == usage_.end() ? 0 : it->second;
}

uint64_t NamespaceLedger::namespaces() const {
  absl::ReaderMutexLock lock(&mu_);
  uint64_t n = 0;
  for (const auto& [ns, state] : namespaces_) {
    if (state.has_owner) ++n;
  }
  return n;
}

}  // namespace vqkv::storage
