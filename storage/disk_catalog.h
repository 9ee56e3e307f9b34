// DiskCatalog: what the RocksDB tier (storage/rocksdb_tier.h) stores besides
// blocks, as known in memory: the hashes of the stored codebook files and
// the owner of each namespace. It owns the key encodings of those records:
//   codebooks column family: 8-byte big-endian hash -> the file bytes;
//   metadata column family:  'n' + 16-byte namespace id -> owning tenant;
//                            'c' + 8-byte big-endian hash + tenant -> the
//                            file's size as a little-endian u64: a tenant's
//                            reference to a codebook file (what the
//                            registry's per-tenant quota counts).
// The tier writes the records and, once a write succeeds, updates the
// catalog; at open it feeds every stored key to Load*.
//
// Thread safety: all methods are thread-safe (one internal lock, a leaf).
#ifndef VQKV_STORAGE_DISK_CATALOG_H_
#define VQKV_STORAGE_DISK_CATALOG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "storage/keys.h"

namespace vqkv::storage {

// One tenant's reference to a stored codebook file.
struct CodebookRef {
  uint64_t hash = 0;
  std::string tenant;
  uint64_t bytes = 0;
};

class DiskCatalog {
 public:
  DiskCatalog() = default;
  DiskCatalog(const DiskCatalog&) = delete;
  DiskCatalog& operator=(const DiskCatalog&) = delete;

  // Record keys.
  static std::string CodebookKey(uint64_t hash);
  static std::string OwnerKey(const NamespaceId& ns);
  static std::string CodebookRefKey(uint64_t hash, absl::string_view tenant);

  // Loading at open. Clear forgets everything. LoadCodebookKey takes a key
  // of the codebooks column family; LoadOwner a metadata record, returning
  // false (ignoring it) when it is not an owner record.
  void Clear();
  void LoadCodebookKey(absl::string_view key);
  bool LoadOwner(absl::string_view key, absl::string_view value);
  // A metadata record that is a codebook reference; false (ignored) if not.
  bool LoadCodebookRef(absl::string_view key, absl::string_view value);

  bool HasCodebook(uint64_t hash) const;
  void AddCodebook(uint64_t hash);
  std::vector<uint64_t> CodebookHashes() const;
  // Forgets a codebook file and every reference to it.
  void EraseCodebook(uint64_t hash);

  void AddCodebookRef(uint64_t hash, absl::string_view tenant, uint64_t bytes);
  void EraseCodebookRef(uint64_t hash, absl::string_view tenant);
  std::vector<CodebookRef> CodebookRefs() const;
  // The tenants referencing `hash`.
  std::vector<std::string> CodebookTenants(uint64_t hash) const;

  void SetOwner(const NamespaceId& ns, absl::string_view tenant);
  void EraseOwner(const NamespaceId& ns);
  absl::flat_hash_map<NamespaceId, std::string> Owners() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_set<uint64_t> codebooks_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<NamespaceId, std::string> owners_ ABSL_GUARDED_BY(mu_);
  // hash -> tenant -> file bytes.
  absl::flat_hash_map<uint64_t, absl::flat_hash_map<std::string, uint64_t>>
      refs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_DISK_CATALOG_H_
