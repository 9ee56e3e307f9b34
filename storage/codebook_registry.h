// CodebookRegistry: the content-addressed registry of codebook files that
// blocks refer to by hash (kernels/codebook_set.h), shared by all tenants.
//
// Every registered hash is known in memory. With a disk tier the files are
// persisted there and their bytes are cached in memory up to cache_bytes,
// least recently used first out (a file larger than the whole cache is not
// cached); a cache miss reads the disk. Without a disk tier every file stays
// in memory, whatever cache_bytes says.
//
// References and quotas: a file is stored once, but each tenant that puts
// it holds a reference to it, and each reference counts against that
// tenant's quota (CodebookQuota: number of sets and their bytes), so no
// tenant can fill the disk with distinct valid sets. Delete(tenant, hash)
// drops the tenant's reference; the file goes with its last reference.
// References are persisted with the file (storage/disk_catalog.h). Files
// stored before references existed (no reference records) are kept and
// count for no tenant.
//
// Verification: with options.verify, every file read from disk is checked
// (TieredStore uses VerifyCodebookFile: the file's content hash must be the
// hash it is registered under). A file that fails is never served: Get
// returns kDataLoss, and the file and its references are dropped (counted in
// corrupt_dropped()), so the next Get is kNotFound and the set can be put
// again.
//
// Errors: Put returns kInvalidArgument for hash 0 or empty bytes,
// kResourceExhausted over the tenant's quota, and the disk's error
// (kUnavailable, kResourceExhausted) when persisting fails; Get returns
// kNotFound for an unregistered hash, kDataLoss for a file that failed
// verification, and the disk's error (kDataLoss, kUnavailable) when reading
// fails; Delete returns kNotFound when the tenant holds no reference.
// Disk errors other than kNotFound are also reported to on_disk_fault.
//
// Thread safety: all methods are thread-safe. Put and Delete are serialized
// (one write lock, held across their disk write); no lock but that one is
// held while calling the disk tier, and none while calling on_disk_fault.
#ifndef VQKV_STORAGE_CODEBOOK_REGISTRY_H_
#define VQKV_STORAGE_CODEBOOK_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <list>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "storage/keys.h"

namespace vqkv::storage {

class RocksDbTier;

// Per-tenant bound on codebook references. 0 in a field: unlimited.
struct CodebookQuota {
  uint64_t max_sets = 32;
  uint64_t max_bytes = uint64_t{8} << 30;  // 8 GiB
};

// What a tenant's references hold.
struct CodebookUsage {
  uint64_t sets = 0;
  uint64_t bytes = 0;
};

// OK iff `bytes` is a codebook file (CodebookSet::Deserialize) whose
// content hash is `hash`; else kDataLoss.
absl::Status VerifyCodebookFile(uint64_t hash, absl::string_view bytes);

struct CodebookRegistryOptions {
  // Not owned; null: memory only. Must outlive the registry.
  RocksDbTier* disk = nullptr;
  // Bound on the cached bytes (with a disk tier).
  uint64_t cache_bytes = uint64_t{256} << 20;
  // Every tenant's quota.
  CodebookQuota quota;
  // Checks each file read from disk; empty: no check.
  std::function<absl::Status(uint64_t hash, absl::string_view bytes)> verify;
  // Called with a failed disk operation's status and what it was doing
  // ("put codebook", "get codebook"). May be empty.
  std::function<void(const absl::Status&, absl::string_view what)>
      on_disk_fault;
};

class CodebookRegistry {
 public:
  // Knows every hash the disk tier holds (their bytes are read on demand)
  // and every reference.
  explicit CodebookRegistry(CodebookRegistryOptions options);
  CodebookRegistry(const CodebookRegistry&) = delete;
  CodebookRegistry& operator=(const CodebookRegistry&) = delete;

  // Registers `bytes` under `hash` with a reference for `tenant`;
  // idempotent when the tenant already holds one.
  absl::Status Put(absl::string_view tenant, uint64_t hash,
                   absl::string_view bytes);
  // Put for the anonymous tenant "".
  absl::Status Put(uint64_t hash, absl::string_view bytes) {
    return Put("", hash, bytes);
  }
  // Drops `tenant`'s reference to `hash` (and the file with the last one).
  absl::Status Delete(absl::string_view tenant, uint64_t hash);
  absl::StatusOr<SharedBytes> Get(uint64_t hash);
  bool Has(uint64_t hash) const;
  // Number of registered hashes.
  uint64_t size() const;
  CodebookUsage Usage(absl::string_view tenant) const;
  // Files dropped because they failed verification.
  uint64_t corrupt_dropped() const;

  // The cache, for tests and stats: whether `hash`'s bytes are in memory,
  // and the bytes cached.
  bool IsCached(uint64_t hash) const;
  uint64_t cached_bytes() const;

 private:
  struct Cached {
    SharedBytes bytes;
    std::list<uint64_t>::iterator lru;  // position in lru_
  };
  void CacheLocked(uint64_t hash, SharedBytes bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UncacheLocked(uint64_t hash) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddRefLocked(uint64_t hash, absl::string_view tenant, uint64_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets `hash` and every reference to it.
  void ForgetLocked(uint64_t hash) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NoteDiskFault(const absl::Status& s, absl::string_view what) const;

  const CodebookRegistryOptions options_;
  // Serializes Put and Delete (held across their disk writes).
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  absl::flat_hash_set<uint64_t> hashes_ ABSL_GUARDED_BY(mu_);
  // hash -> tenant -> file bytes.
  absl::flat_hash_map<uint64_t, absl::flat_hash_map<std::string, uint64_t>>
      refs_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, CodebookUsage> usage_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Cached> cache_ ABSL_GUARDED_BY(mu_);
  // Cached hashes, most recently used first.
  std::list<uint64_t> lru_ ABSL_GUARDED_BY(mu_);
  uint64_t cached_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t corrupt_dropped_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_CODEBOOK_REGISTRY_H_
