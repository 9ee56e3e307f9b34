// The client's seam to a cache: where encoded blocks and codebook sets live.
// One interface, several transports: GrpcBackend (client/grpc/) talks to a
// vqkv-server; EmbeddedBackend keeps a storage::TieredStore in the process
// (tools, tests, single-process engines); a cluster backend (sharding over
// several servers) slots in here without changing CacheClient.
//
// Errors: a call-level status means the backend could not answer at all
// (kUnavailable: unreachable or shutting down; kDeadlineExceeded: the
// deadline passed; kUnauthenticated / kPermissionDenied; kInvalidArgument
// for a request the server rejected). Per-block outcomes are results, not
// errors: a miss is a result.
//
// Thread safety: every method may be called concurrently.
#ifndef VQKV_CLIENT_BACKEND_H_
#define VQKV_CLIENT_BACKEND_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "storage/keys.h"
#include "storage/namespace.h"

namespace vqkv::client {

// One block to store. `data` is a sealed encoded block (kernels/block.h),
// borrowed for the duration of the call.
struct PutItem {
  storage::BlockHash hash;
  absl::string_view data;
  uint32_t chain_position = 0;
};

// One fetched block: ok() with the sealed bytes, or a per-block status
// (kNotFound: a miss; kDataLoss: the stored copy was corrupt; kUnavailable:
// try again later).
using GetItem = absl::StatusOr<std::string>;

class Backend {
 public:
  virtual ~Backend() = default;

  // Presence of each hash of an ordered chain. With lease_ms > 0 the
  // leading present blocks are leased (kvcache.proto LookupRequest.lease_ms)
  // so a Get right after does not race eviction.
  virtual absl::StatusOr<std::vector<bool>> Lookup(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes, uint32_t lease_ms,
      absl::Time deadline) = 0;

  // Stores blocks; one status per block, in order (OK, kAlreadyExists,
  // kResourceExhausted, ...).
  virtual absl::StatusOr<std::vector<absl::Status>> Put(
      const storage::NamespaceSpec& ns, absl::Span<const PutItem> blocks,
      absl::Time deadline) = 0;

  // Fetches blocks; one GetItem per hash, in order.
  virtual absl::StatusOr<std::vector<GetItem>> Get(
      const storage::NamespaceSpec& ns,
      absl::Span<const storage::BlockHash> hashes, absl::Time deadline) = 0;

  // Registers a codebook file under its content hash; an already registered
  // hash is OK.
  virtual absl::Status PutCodebook(uint64_t hash, absl::string_view data,
                                   absl::Time deadline) = 0;

  // The codebook file registered under `hash`; kNotFound when none is.
  virtual absl::StatusOr<std::string> GetCodebook(uint64_t hash,
                                                  absl::Time deadline) = 0;

  // Rendezvous (kvcache.proto PutRendezvous): sets `key` of the caller's
  // tenant to `value` for `ttl` (capped by the cache at 10 minutes),
  // replacing an entry already there. For processes that meet through the
  // cache, e.g. to exchange an NCCL unique id (client/nccl/).
  // Errors: kInvalidArgument for a key not 1..256 bytes, a value not
  // 1..4096 bytes or a ttl under 1 ms; kResourceExhausted when the tenant
  // (or the cache) holds its maximum of entries; the call-level errors above.
  virtual absl::Status PutRendezvous(absl::string_view key,
                                     absl::string_view value,
                                     absl::Duration ttl,
                                     absl::Time deadline) = 0;

  // The live value of rendezvous `key`. Errors: kNotFound when the key is
  // absent, expired, or another tenant's; kInvalidArgument for a key not
  // 1..256 bytes; the call-level errors above.
  virtual absl::StatusOr<std::string> GetRendezvous(absl::string_view key,
                                                    absl::Time deadline) = 0;

  // Whether the cache can serve: OK, or kUnavailable (not serving,
  // unreachable) / kDeadlineExceeded. GrpcBackend asks the server's
  // grpc.health.v1 Health service; a backend in this process is always
  // healthy. The cluster client readmits a failed node by this check.
  virtual absl::Status CheckHealth(absl::Time deadline) {
    (void)deadline;
    return absl::OkStatus();
  }

  // For logs and errors, e.g. "grpc:127.0.0.1:50051" or "embedded".
  virtual std::string Describe() const = 0;
};

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_BACKEND_H_
