// A storage tier: one place encoded blocks can live (memory, local disk).
// The tiered store (storage/tiered_store.h) stacks tiers; the service talks to
// the tiered store, never to a tier directly.
//
// Blocks are immutable and addressed by BlockKey (storage/keys.h). A tier
// stores the bytes it is given; validation (VerifyBlock, codebooks, tenants)
// is the tiered store's job, except that a tier which reads from a medium
// that can corrupt data verifies every block it reads.
//
// Thread safety: every method of every Tier implementation may be called
// concurrently from any number of threads.
#ifndef VQKV_STORAGE_TIER_H_
#define VQKV_STORAGE_TIER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "storage/keys.h"

namespace vqkv::storage {

// The default disk budget (TieredStoreOptions::disk_bytes,
// RocksDbTierOptions::capacity_bytes): 16 GiB.
inline constexpr uint64_t kDefaultDiskBytes = uint64_t{16} << 30;

// Bytes and blocks a tier currently holds (payload bytes: the sizes of the
// stored blocks, not counting index or per-record overhead).
struct TierUsage {
  uint64_t bytes = 0;
  uint64_t blocks = 0;
};

class Tier {
 public:
  Tier() = default;
  Tier(const Tier&) = delete;
  Tier& operator=(const Tier&) = delete;
  virtual ~Tier() = default;

  // Short name for logs and stats: "memory", "rocksdb".
  virtual absl::string_view name() const = 0;

  // Stores `block` under `key`. The tier copies the bytes; the caller keeps
  // ownership of `block`. chain_position is the block's index in its prefix
  // chain (eviction hint, storage/keys.h BlockPut).
  // A put of a key the tier already holds is idempotent: it returns OK and
  // keeps the stored bytes (keys are content addresses).
  // Errors: kResourceExhausted when the block can never fit the tier's
  // budget (or the medium is full); kUnavailable for an I/O error (retry may
  // succeed); kInvalidArgument for an empty block.
  virtual absl::Status Put(const BlockKey& key, uint32_t chain_position,
                           absl::string_view block) = 0;

  // Returns the bytes stored under `key`. The result shares ownership of
  // the bytes, which stay valid after a concurrent eviction or delete.
  // Errors: kNotFound when absent (or expired); kDataLoss when the stored
  // record failed verification (the tier deletes it, so the next Get is
  // kNotFound); kUnavailable for an I/O error.
  virtual absl::StatusOr<SharedBytes> Get(const BlockKey& key) = 0;

  // One entry per key, in order: true iff Get(key) would find the key now
  // (modulo a corrupted record, which only a read detects). Never does
  // payload I/O, never fails.
  virtual std::vector<bool> Contains(absl::Span<const BlockKey> keys) = 0;

  // Removes `key`. Returns the size in bytes of the removed block, 0 when the
  // tier did not hold it (deleting an absent key is not an error).
  // Errors: kUnavailable for an I/O error.
  virtual absl::StatusOr<uint64_t> Delete(const BlockKey& key) = 0;

  // Removes every block of namespace `ns`. Returns what was removed.
  // Errors: kUnavailable for an I/O error.
  virtual absl::StatusOr<TierUsage> DeleteNamespace(const NamespaceId& ns) = 0;

  // What the tier holds now.
  virtual TierUsage Usage() const = 0;
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_TIER_H_
