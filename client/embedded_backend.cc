#include "client/embedded_backend.h"

#include <utility>

namespace vqkv::client {

absl::StatusOr<std::unique_ptr<EmbeddedBackend>> EmbeddedBackend::Open(
    storage::TieredStoreOptions options) {
  absl::StatusOr<std::unique_ptr<storage::TieredStore>> store =
      storage::TieredStore::Open(std::move(options));
  if (!store.ok()) return store.status();
  auto backend = std::make_unique<EmbeddedBackend>(store->get());
  backend->owned_ = *std::move(store);
  return backend;
}

EmbeddedBackend::EmbeddedBackend(storage::TieredStore* store) : store_(store) {}

EmbeddedBackend::~EmbeddedBackend() {
  if (owned_ != nullptr) owned_->Flush().IgnoreError();
}

absl::StatusOr<std::vector<bool>> EmbeddedBackend::Lookup(
    const storage::NamespaceSpec& ns,
    absl::Span<const storage::BlockHash> hashes, uint32_t lease_ms,
    absl::Time /*deadline*/) {
  absl::Status s = storage::ValidateNamespaceSpec(ns);
  if (!s.ok()) return s;
  storage::LookupResult r =
      store_->Lookup("", storage::ComputeNamespaceId("", ns), hashes,
                     absl::Milliseconds(lease_ms));
  return std::move(r.present);
}

absl::StatusOr<std::vector<absl::Status>> EmbeddedBackend::Put(
    const storage::NamespaceSpec& ns, absl::Span<const PutItem> blocks,
    absl::Time /*deadline*/) {
  absl::Status s = storage::ValidateNamespaceSpec(ns);
  if (!s.ok()) return s;
  const storage::NamespaceId id = storage::ComputeNamespaceId("", ns);
  std::vector<storage::BlockPut> puts;
  puts.reserve(blocks.size());
  for (const PutItem& b : blocks) {
    puts.push_back(storage::BlockPut{.key = {id, b.hash},
                                     .chain_position = b.chain_position,
                                     .block = b.data});
  }
  return store_->PutBlocks("", puts);
}

absl::StatusOr<std::vector<GetItem>> EmbeddedBackend::Get(
    const storage::NamespaceSpec& ns,
    absl::Span<const storage::BlockHash> hashes, absl::Time /*deadline*/) {
  absl::Status s = storage::ValidateNamespaceSpec(ns);
  if (!s.ok()) return s;
  std::vector<absl::StatusOr<storage::SharedBytes>> got =
      store_->GetBlocks("", storage::ComputeNamespaceId("", ns), hashes);
  std::vector<GetItem> out;
  out.reserve(got.size());
  for (auto& g : got) {
    if (g.ok()) {
      out.emplace_back(**g);
    } else {
      out.emplace_back(g.status());
    }
  }
  return out;
}

absl::Status EmbeddedBackend::PutCodebook(uint64_t hash, absl::string_view data,
                                          absl::Time /*deadline*/) {
  return store_->PutCodebooks(hash, data);
}

absl::StatusOr<std::string> EmbeddedBackend::GetCodebook(
    uint64_t hash, absl::Time /*deadline*/) {
  absl::StatusOr<storage::SharedBytes> got = store_->GetCodebooks(hash);
  if (!got.ok()) return got.status();
  return **got;
}

absl::Status EmbeddedBackend::PutRendezvous(absl::string_view key,
                                            absl::string_view value,
                                            absl::Duration ttl,
                                            absl::Time /*deadline*/) {
  return rendezvous_.Put("", key, value, ttl).status();
}

absl::StatusOr<std::string> EmbeddedBackend::GetRendezvous(
    absl::string_view key, absl::Time /*deadline*/) {
  absl::StatusOr<storage::RendezvousEntry> got = rendezvous_.Get("", key);
  if (!got.ok()) return got.status();
  return std::move(got->value);
}

}  // namespace vqkv::client
