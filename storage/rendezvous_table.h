// RendezvousTable: a small in-memory map of (tenant, key) -> value with a
// time to live, for processes that must meet through the cache service, e.g.
// a prefill and a decode process exchanging an NCCL unique id
// (PutRendezvous / GetRendezvous in proto/vqkv/v1/kvcache.proto,
// client/nccl/nccl_rendezvous.h). Not a store for blocks: nothing is
// persisted, and the server's restart loses every entry.
//
// Semantics: Put sets the value and the lifetime of (tenant, key),
// replacing an entry already there (value and TTL). An entry is live until
// its put time plus its TTL; an expired entry is absent. Tenants are
// disjoint: a key put by one tenant is absent for every other tenant.
//
// Memory bound: at most max_entries entries in all, and max_tenant_entries
// per tenant; a put of a new key past either bound (after dropping expired
// entries) fails with kResourceExhausted. Worst case memory is about
// max_entries x (kMaxRendezvousKeyBytes + kMaxRendezvousValueBytes + 128
// tenant bytes + overhead): about 300 MB at the defaults, typically a few KB.
// Expired entries are dropped lazily, in expiry order, at the start of every
// Put and Get, so at most the entries that expired since the last call are
// held besides live ones.
//
// Thread safety: all methods are thread-safe (one mutex, held for O(log n)
// per call plus the expired entries dropped). The clock is called with the
// mutex held and must not call back into the table.
#ifndef VQKV_STORAGE_RENDEZVOUS_TABLE_H_
#define VQKV_STORAGE_RENDEZVOUS_TABLE_H_

#include <cstddef>
#include <functional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace vqkv::storage {

// Limits of one entry (the wire contract's, kvcache.proto PutRendezvous).
inline constexpr size_t kMaxRendezvousKeyBytes = 256;
inline constexpr size_t kMaxRendezvousValueBytes = 4096;
// The longest TTL a put may ask for; longer ones are capped to it (10 min).
inline constexpr absl::Duration kMaxRendezvousTtl = absl::Minutes(10);

struct RendezvousTableOptions {
  // Time source. Default absl::Now. Must be thread-safe.
  std::function<absl::Time()> clock;
  // Entries held at once, over all tenants; >= 1.
  size_t max_entries = 65536;
  // Entries held at once by one tenant; >= 1.
  size_t max_tenant_entries = 1024;
  // Cap on a put's TTL; clamped to [1 ms, kMaxRendezvousTtl].
  absl::Duration max_ttl = kMaxRendezvousTtl;
};

// A live entry as Get returns it.
struct RendezvousEntry {
  std::string value;
  // Time left before it expires (> 0).
  absl::Duration remaining_ttl;
};

class RendezvousTable {
 public:
  explicit RendezvousTable(RendezvousTableOptions options = {});
  RendezvousTable(const RendezvousTable&) = delete;
  RendezvousTable& operator=(const RendezvousTable&) = delete;
  ~RendezvousTable();

  // Sets (tenant, key) to `value` for min(ttl, max_ttl); returns the TTL
  // granted. Replaces an entry already there, value and TTL.
  // Errors (kInvalidArgument, the message names the field): key not
  // 1..kMaxRendezvousKeyBytes bytes ("key must be 1..256 bytes, got 0"),
  // value not 1..kMaxRendezvousValueBytes bytes, ttl under 1 ms ("ttl_ms
  // must be at least 1"). kResourceExhausted: the key is new and the tenant
  // or the table holds its maximum of live entries.
  absl::StatusOr<absl::Duration> Put(absl::string_view tenant,
                                     absl::string_view key,
                                     absl::string_view value,
                                     absl::Duration ttl);

  // The live entry of (tenant, key). Errors: kNotFound when there is none
  // (never put, expired, or put by another tenant: indistinguishable);
  // kInvalidArgument for a key that is not 1..kMaxRendezvousKeyBytes bytes.
  absl::StatusOr<RendezvousEntry> Get(absl::string_view tenant,
                                      absl::string_view key);

  // Entries held now (live, and expired ones not yet dropped), in all and
  // for one tenant.
  size_t size() const;
  size_t TenantSize(absl::string_view tenant) const;

  // The table's clock.
  absl::Time Now() const;

  const RendezvousTableOptions& options() const { return options_; }

 private:
  using Key = std::pair<std::string, std::string>;  // (tenant, key)
  struct Entry {
    std::string value;
    absl::Time expires;
  };

  // Drops every entry that expired at or before `now`.
  void DropExpiredLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLocked(const Key& key, absl::Time expires)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RendezvousTableOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<Key, Entry> entries_ ABSL_GUARDED_BY(mu_);
  // The same entries ordered by expiry, for dropping expired ones.
  absl::btree_set<std::pair<absl::Time, Key>> by_expiry_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, size_t> per_tenant_ ABSL_GUARDED_BY(mu_);
};

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_RENDEZVOUS_TABLE_H_
