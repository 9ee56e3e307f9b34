// CodebookRegistry: the content-addressed registry of codebook files that
// blocks refer to by hash (kernels/codebook_set.h), shared by all tenants.
//
// Every registered hash is known in memory. With a disk tier the files are
// persisted there and their bytes are cached in memory up to cache_bytes,
// least recently used first out (a file larger than the whole cache is not
// cached); a cache miss reads the disk. Without a disk tier every file stays
// in memory, whatever cache_bytes says.
//
// Errors: Put returns kInvalidArgument for hash 0 or empty bytes, and the
// disk's error (kUnavailable, kResourceExhausted) when persisting fails; Get
// returns kNotFound for an unregistered hash and the disk's error
// (kDataLoss, kUnavailable) when reading fails. Disk errors other than
// kNotFound are also reported to on_disk_fault.
//
// Thread safety: all methods are thread-safe. No lock is held while calling
// the disk tier or on_disk_fault.
#ifndef VQKV_STORAGE_CODEBOOK_REGISTRY_H_
#define VQKV_STORAGE_CODEBOOK_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <list>

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

struct CodebookRegistryOptions {
  // Not owned; null: memory only. Must outlive the registry.
  RocksDbTier* disk = nullptr;
  // Bound on the cached bytes (with a disk tier).
  uint64_t cache_bytes = uint64_t{256} << 20;
  // Called with a failed disk operation's status and what it was doing
  // ("put codebook", "get codebook"). May be empty.
  std::function<void(const absl::Status&, absl::string_view what)>
      on_disk_fault;
};

class CodebookRegistry {
 public:
  // Knows every hash the disk tier holds (their bytes are read on demand).
  explicit CodebookRegistry(CodebookRegistryOptions options);
  CodebookRegistry(const CodebookRegistry&) = delete;
  CodebookRegistry& operator=(const CodebookRegistry&) = delete;

  // Registers `bytes` under `hash`; idempotent for a registered hash.
  absl::Status Put(uint64_t hash, absl::string_view bytes);
  absl::StatusOr<SharedBytes> Get(uint64_t hash);
  bool Has(uint64_t hash) const;
  // Number of registered hashes.
  uint64_t size() const;

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
  void NoteDiskFault(const absl::Status& s, absl::string_view what) const;

  const CodebookRegistryOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_set<uint64_t> hashes_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Cached> cache_ ABSL_GUARDED_BY(mu_);
  // Cached hashes, most recently used first.
  std::list<uint64_t> lru_ ABSL_GUARDED_BY(mu_);
  uint64_t cached_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_CODEBOOK_REGISTRY_H_
