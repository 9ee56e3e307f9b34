// Settings of the KVCache service (service/kv_service.h); vqkv-server's
// ServerConfig embeds them.
//
// Thread safety: plain values.
#ifndef VQKV_SERVICE_KV_SERVICE_OPTIONS_H_
#define VQKV_SERVICE_KV_SERVICE_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "storage/rendezvous_table.h"

namespace vqkv::service {

struct KvServiceOptions {
  // Largest message the server sends; unary GetBlocks stops adding block data
  // before a response would exceed it. vqkv-server also makes it the gRPC
  // server's send and receive limit.
  uint64_t max_message_bytes = uint64_t{64} << 20;
  // Largest codebook file PutCodebookStream accepts (its declared
  // total_bytes); a larger one fails with RESOURCE_EXHAUSTED before anything
  // is buffered.
  uint64_t max_codebook_bytes = uint64_t{4} << 30;
  // Most blocks one PutBlocksStream may carry (over all its messages). The
  // limit in force is the smaller of this and max_message_bytes / 8, so
  // that the stream's one response (PutStreamResultsBudget) always fits a
  // message; a message that would pass it ends the call with
  // RESOURCE_EXHAUSTED before any of its blocks is validated or stored.
  uint64_t max_stream_blocks = uint64_t{1} << 20;
  // Worker threads for storage work; 0 = max(8, 2 x hardware threads).
  int workers = 0;
  // Admission control: new calls whose work must go to a worker are refused
  // with RESOURCE_EXHAUSTED while this many are already waiting for one
  // (work of calls already admitted, e.g. a stream's next message, is
  // always queued). 0: no bound.
  size_t max_queued_work = 4096;
  // Cap on LookupRequest.lease_ms: a Lookup leases its prefix for
  // min(lease_ms, max_lease). Zero: leases are off (lease_ms is ignored).
  absl::Duration max_lease = absl::Seconds(10);
  // The tenant whose Stats show the whole cache (every tier's usage, the
  // store's hit/miss/fault counters, the last disk error text). Every other
  // tenant sees its own usage and hits only (KvCacheService::DoStats). Empty:
  // no tenant does. With auth off, the anonymous tenant is the only tenant
  // and sees everything.
  std::string admin_tenant;
  // Bounds and TTL cap of the rendezvous table (PutRendezvous); the clock
  // is injectable for tests.
  storage::RendezvousTableOptions rendezvous;
};

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_KV_SERVICE_OPTIONS_H_
