// A Backend over a storage::TieredStore in this process: the same memory
// and RocksDB tiers as vqkv-server, without a network hop. For tools
// (`vqkv generate --store DIR`), tests, and engines that want a local cache.
// Blocks are stored for the tenant "" (there is no authentication in
// process); the deadline is ignored, since every call is local. Lookup
// leases are passed to the store as asked (no server cap applies).
// Rendezvous entries live in a storage::RendezvousTable of the backend's own
// (default bounds), so they are shared only by users of this one backend
// object.
//
// Thread safety: as Backend.
#ifndef VQKV_CLIENT_EMBEDDED_BACKEND_H_
#define VQKV_CLIENT_EMBEDDED_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "client/backend.h"
#include "storage/rendezvous_table.h"
#include "storage/tiered_store.h"

namespace vqkv::client {

class EmbeddedBackend : public Backend {
 public:
  // Opens a store with `options` (storage::TieredStore::Open's errors).
  static absl::StatusOr<std::unique_ptr<EmbeddedBackend>> Open(
      storage::TieredStoreOptions options);
  // Uses a store the caller owns; it must outlive the backend.
  explicit EmbeddedBackend(storage::TieredStore* store);
  ~EmbeddedBackend() override;

  absl::StatusOr<std::vector<bool>> Lookup(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes, uint32_t lease_ms,
      absl::Time deadline) override;
  absl::StatusOr<std::vector<absl::Status>> Put(
      const storage::NamespaceSpec& ns, absl::Span<const PutItem> blocks,
      absl::Time deadline) override;
  absl::StatusOr<std::vector<GetItem>> Get(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes,
      absl::Time deadline) override;
  absl::Status PutCodebook(uint64_t hash, absl::string_view data,
                           absl::Time deadline) override;
  absl::StatusOr<std::string> GetCodebook(uint64_t hash,
                                          absl::Time deadline) override;
  absl::Status PutRendezvous(absl::string_view key, absl::string_view value,
                             absl::Duration ttl, absl::Time deadline) override;
  absl::StatusOr<std::string> GetRendezvous(absl::string_view key,
                                            absl::Time deadline) override;
  std::string Describe() const override { return "embedded"; }

  storage::TieredStore* store() { return store_; }

 private:
  std::unique_ptr<storage::TieredStore> owned_;
  storage::TieredStore* store_;
  storage::RendezvousTable rendezvous_;
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_EMBEDDED_BACKEND_H_
