// NamespaceLedger: who owns each namespace, how many bytes and blocks each
// namespace and each tenant holds, and each tenant's quota. In memory only;
// the tiered store (storage/tiered_store.h) persists owners through its disk
// tier and rebuilds the ledger from it at Open (Load).
//
// A namespace is owned by the tenant whose Claim created it. A namespace
// known only from blocks on disk, without an owner record, is unowned: its
// bytes count for no tenant, and it is invisible (OwnedBy false, Info
// kNotFound) until a put claims it, which adds those bytes to the claimer.
//
// Quotas: Quota(tenant) is the one quota lookup: SetQuota's value, else the
// per-tenant value given at construction, else the default; 0 is unlimited.
// Charge checks the quota and counts the bytes in one step; Admit (the
// store's put path) also claims an unowned namespace in that same step,
// only when the quota admits the put, so a tenant over quota creates no
// namespace.
//
// Namespace bound: a tenant owns at most max_namespaces_per_tenant
// namespaces. A claim at the bound first reclaims the tenant's empty
// namespaces (no blocks, no bytes: their blocks were evicted or deleted);
// if none is empty the claim fails with kResourceExhausted.
//
// Errors: Claim returns kPermissionDenied for another tenant's namespace;
// Charge returns kResourceExhausted over the quota; Info returns kNotFound
// for an unknown or unowned namespace.
//
// Thread safety: all methods are thread-safe. The ledger's lock is a leaf:
// it never calls out while holding it.
#ifndef VQKV_STORAGE_NAMESPACE_LEDGER_H_
#define VQKV_STORAGE_NAMESPACE_LEDGER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "storage/keys.h"

namespace vqkv::storage {

// Default NamespaceLedger bound on namespaces per tenant.
inline constexpr uint64_t kDefaultMaxNamespacesPerTenant = 4096;

class NamespaceLedger {
 public:
  // `tenant_quotas` and `default_quota` in bytes, 0 meaning unlimited.
  // max_namespaces_per_tenant: 0 means unlimited.
  NamespaceLedger(
      uint64_t default_quota,
      absl::flat_hash_map<std::string, uint64_t> tenant_quotas,
      uint64_t max_namespaces_per_tenant = kDefaultMaxNamespacesPerTenant);
  NamespaceLedger(const NamespaceLedger&) = delete;
  NamespaceLedger& operator=(const NamespaceLedger&) = delete;

  // Adds what a disk tier holds (RocksDbTier::Namespaces): namespaces with
  // an owner record, or with no blocks, are owned by info.tenant.
  void Load(const absl::flat_hash_map<NamespaceId, NamespaceInfo>& on_disk);

  bool OwnedBy(absl::string_view tenant, const NamespaceId& ns) const;
  // Claims `ns` for `tenant` if it is unowned (returns true: the caller
  // persists the owner), or checks that `tenant` owns it (returns false).
  absl::StatusOr<bool> Claim(absl::string_view tenant, const NamespaceId& ns);

  // What Admit did besides counting.
  struct Admission {
    bool claimed = false;  // `ns` was unowned and is now `tenant`'s
    // Empty namespaces of `tenant` forgotten to stay within the bound (the
    // caller deletes their owner records).
    std::vector<NamespaceId> reclaimed;
  };
  // One step of a put: checks that `tenant` owns `ns` or may claim it
  // (kPermissionDenied for another tenant's; kResourceExhausted when the
  // quota cannot take `bytes` more or, for a claim, the namespace bound is
  // reached with no empty namespace to reclaim), claims it if unowned, and
  // with count_block counts one block of `bytes`. On error nothing changes.
  absl::StatusOr<Admission> Admit(absl::string_view tenant,
                                  const NamespaceId& ns, uint64_t bytes,
                                  bool count_block);

  // Counts one block of `bytes` in `ns` (owned by `tenant`), unless that
  // takes the tenant past its quota: then kResourceExhausted, nothing
  // counted.
  absl::Status Charge(absl::string_view tenant, const NamespaceId& ns,
                      uint64_t bytes);
  // Takes one block of `bytes` out of `ns` (no-op for an unknown one).
  void Uncharge(const NamespaceId& ns, uint64_t bytes);
  // Forgets `ns` and its usage. Returns what it held (nullopt if unknown).
  std::optional<NamespaceInfo> Remove(const NamespaceId& ns);
  absl::StatusOr<NamespaceInfo> Info(const NamespaceId& ns) const;

  void SetQuota(absl::string_view tenant, uint64_t bytes);
  uint64_t Quota(absl::string_view tenant) const;
  uint64_t Usage(absl::string_view tenant) const;
  // Number of owned namespaces (in all, and `tenant`'s).
  uint64_t namespaces() const;
  uint64_t namespaces(absl::string_view tenant) const;

 private:
  uint64_t QuotaLocked(absl::string_view tenant) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Makes `state` (of `ns`) owned by `tenant`, within the namespace bound.
  absl::Status ClaimLocked(absl::string_view tenant, const NamespaceId& ns,
                           NamespaceInfo& state,
                           std::vector<NamespaceId>* reclaimed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ForgetLocked(
      absl::flat_hash_map<NamespaceId, NamespaceInfo>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t default_quota_;
  const uint64_t max_namespaces_per_tenant_;
  mutable absl::Mutex mu_;
  // has_owner false: blocks on disk without an owner record.
  absl::flat_hash_map<NamespaceId, NamespaceInfo> namespaces_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> usage_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> quotas_ ABSL_GUARDED_BY(mu_);
  // Owned namespaces per tenant.
  absl::flat_hash_map<std::string, uint64_t> owned_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_NAMESPACE_LEDGER_H_
