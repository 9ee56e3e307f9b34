#include "storage/rendezvous_table.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace vqkv::storage {
namespace {

absl::Status CheckKey(absl::string_view key) {
  if (key.empty() || key.size() > kMaxRendezvousKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key must be 1..", kMaxRendezvousKeyBytes, " bytes, got ", key.size()));
  }
  return absl::OkStatus();
}

}  // namespace

RendezvousTable::RendezvousTable(RendezvousTableOptions options)
    : options_(std::move(options)) {
  options_.max_entries = std::max<size_t>(options_.max_entries, 1);
  options_.max_tenant_entries =
      std::max<size_t>(options_.max_tenant_entries, 1);
  options_.max_ttl =
      std::clamp(options_.max_ttl, absl::Milliseconds(1), kMaxRendezvousTtl);
}

RendezvousTable::~RendezvousTable() = default;

absl::Time RendezvousTable::Now() const {
  return options_.clock ? options_.clock() : absl::Now();
}

void RendezvousTable::EraseLocked(const Key& key, absl::Time expires) {
  by_expiry_.erase({expires, key});
  entries_.erase(key);
  auto t = per_tenant_.find(key.first);
  if (t != per_tenant_.end() && --t->second == 0) per_tenant_.erase(t);
}

void RendezvousTable::DropExpiredLocked(absl::Time now) {
  while (!by_expiry_.empty() && by_expiry_.begin()->first <= now) {
    // Copy: EraseLocked erases the set element the reference points into.
    const std::pair<absl::Time, Key> oldest = *by_expiry_.begin();
    EraseLocked(oldest.second, oldest.first);
  }
}

absl::StatusOr<absl::Duration> RendezvousTable::Put(absl::string_view tenant,
                                                    absl::string_view key,
                                                    absl::string_view value,
                                                    absl::Duration ttl) {
  absl::Status s = CheckKey(key);
  if (!s.ok()) return s;
  if (value.empty() || value.size() > kMaxRendezvousValueBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("value must be 1..", kMaxRendezvousValueBytes,
                     " bytes, got ", value.size()));
  }
  if (ttl < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ttl_ms must be at least 1, got ", absl::ToInt64Milliseconds(ttl)));
  }
  const absl::Duration granted = std::min(ttl, options_.max_ttl);
  Key k{std::string(tenant), std::string(key)};
  absl::MutexLock lock(&mu_);
  const absl::Time now = Now();
  DropExpiredLocked(now);
  const absl::Time expires = now + granted;
  auto found = entries_.find(k);
  if (found != entries_.end()) {
    by_expiry_.erase({found->second.expires, k});
    found->second.value.assign(value.data(), value.size());
    found->second.expires = expires;
    by_expiry_.insert({expires, std::move(k)});
    return granted;
  }
  if (entries_.size() >= options_.max_entries) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the rendezvous table holds its maximum of ",
                     options_.max_entries, " entries"));
  }
  size_t& count = per_tenant_[k.first];
  if (count >= options_.max_tenant_entries) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the tenant holds its maximum of ",
                     options_.max_tenant_entries, " rendezvous entries"));
  }
  ++count;
  entries_.emplace(k, Entry{std::string(value), expires});
  by_expiry_.insert({expires, std::move(k)});
  return granted;
}

absl::StatusOr<RendezvousEntry> RendezvousTable::Get(absl::string_view tenant,
                                                     absl::string_view key) {
  absl::Status s = CheckKey(key);
  if (!s.ok()) return s;
  const Key k{std::string(tenant), std::string(key)};
  absl::MutexLock lock(&mu_);
  const absl::Time now = Now();
  DropExpiredLocked(now);
  auto found = entries_.find(k);
  if (found == entries_.end()) {
    return absl::NotFoundError("no such rendezvous key");
  }
  return RendezvousEntry{found->second.value, found->second.expires - now};
}

size_t RendezvousTable::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

size_t RendezvousTable::TenantSize(absl::string_view tenant) const {
  absl::MutexLock lock(&mu_);
  auto t = per_tenant_.find(tenant);
  return t == per_tenant_.end() ? 0 : t->second;
}

}  // namespace vqkv::storage
