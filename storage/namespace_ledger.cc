#include "storage/namespace_ledger.h"

#include <algorithm>
#include <iterator>
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
    absl::flat_hash_map<std::string, uint64_t> tenant_quotas,
    uint64_t max_namespaces_per_tenant)
    : default_quota_(default_quota),
      max_namespaces_per_tenant_(max_namespaces_per_tenant),
      quotas_(std::move(tenant_quotas)) {}

void NamespaceLedger::Load(
    const absl::flat_hash_map<NamespaceId, NamespaceInfo>& on_disk) {
  absl::MutexLock lock(&mu_);
  for (const auto& [ns, info] : on_disk) {
    NamespaceInfo& state = namespaces_[ns];
    state = info;
    state.has_owner = info.has_owner || info.blocks == 0;
    if (state.has_owner) {
      usage_[state.tenant] += state.bytes;
      ++owned_[state.tenant];
    }
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
  absl::Status claimed = ClaimLocked(tenant, ns, state, nullptr);
  if (!claimed.ok()) {
    if (state.blocks == 0 && state.bytes == 0) namespaces_.erase(ns);
    return claimed;
  }
  return true;
}

absl::Status NamespaceLedger::ClaimLocked(absl::string_view tenant,
                                          const NamespaceId& ns,
                                          NamespaceInfo& state,
                                          std::vector<NamespaceId>* reclaimed) {
  uint64_t& owned = owned_[std::string(tenant)];
  if (max_namespaces_per_tenant_ != 0 && owned >= max_namespaces_per_tenant_) {
    // Reclaim the tenant's empty namespaces. (Erasing from a flat_hash_map
    // does not move the other elements, so `state` stays valid.)
    for (auto it = namespaces_.begin(); it != namespaces_.end();) {
      auto next = std::next(it);
      const NamespaceInfo& other = it->second;
      if (it->first != ns && other.has_owner && other.tenant == tenant &&
          other.blocks == 0 && other.bytes == 0) {
        if (reclaimed != nullptr) reclaimed->push_back(it->first);
        namespaces_.erase(it);
        --owned;
      }
      it = next;
    }
    if (owned >= max_namespaces_per_tenant_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the tenant owns ", owned,
                       " namespaces, the limit, and none is "
                       "empty"));
    }
  }
  state.has_owner = true;
  state.tenant = std::string(tenant);
  usage_[state.tenant] += state.bytes;
  ++owned;
  return absl::OkStatus();
}

absl::StatusOr<NamespaceLedger::Admission> NamespaceLedger::Admit(
    absl::string_view tenant, const NamespaceId& ns, uint64_t bytes,
    bool count_block) {
  absl::MutexLock lock(&mu_);
  Admission out;
  auto found = namespaces_.find(ns);
  const bool existed = found != namespaces_.end();
  const bool owned = existed && found->second.has_owner;
  if (owned && found->second.tenant != tenant) {
    return absl::PermissionDeniedError("namespace belongs to another tenant");
  }
  // A claim adds the bytes an unowned namespace already holds on disk.
  const uint64_t inherited = !owned && existed ? found->second.bytes : 0;
  const uint64_t quota = QuotaLocked(tenant);
  auto u = usage_.find(tenant);
  const uint64_t used = u == usage_.end() ? 0 : u->second;
  // (A duplicate put into an owned namespace adds nothing: not checked, so
  // it stays OK under a lowered quota.)
  if ((bytes > 0 || !owned) && quota != 0 && used + inherited + bytes > quota) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tenant quota exceeded: ", used + inherited, " + ", bytes,
                     " > ", quota, " bytes"));
  }
  if (!owned) {
    NamespaceInfo& state = namespaces_[ns];
    absl::Status claimed = ClaimLocked(tenant, ns, state, &out.reclaimed);
    if (!claimed.ok()) {
      if (!existed) namespaces_.erase(ns);
      return claimed;
    }
    out.claimed = true;
  }
  if (count_block) {
    NamespaceInfo& state = namespaces_[ns];
    state.bytes += bytes;
    ++state.blocks;
    usage_[state.tenant] += bytes;
  }
  return out;
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
  ForgetLocked(it);
  return Visible(state);
}

void NamespaceLedger::ForgetLocked(
    absl::flat_hash_map<NamespaceId, NamespaceInfo>::iterator it) {
  const NamespaceInfo& state = it->second;
  if (state.has_owner) {
    uint64_t& usage = usage_[state.tenant];
    usage -= std::min(usage, state.bytes);
    uint64_t& owned = owned_[state.tenant];
    owned -= std::min<uint64_t>(owned, 1);
  }
  namespaces_.erase(it);
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

uint64_t NamespaceLedger::namespaces(absl::string_view tenant) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = owned_.find(tenant);
  return it == owned_.end() ? 0 : it->second;
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
