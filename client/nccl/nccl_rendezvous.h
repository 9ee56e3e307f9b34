// NCCL unique-id rendezvous through the cache service, for disaggregated
// serving: the prefill process creates an NCCL communicator id
// (ncclGetUniqueId) and publishes it under a channel name; the decode process
// awaits it under the same name, and both then call ncclCommInitRank with
// it. The id travels as the value of the rendezvous key "nccl/<channel>"
// (Backend::PutRendezvous / GetRendezvous, kvcache.proto PutRendezvous),
// scoped to the caller's tenant and kept for a TTL.
//
// The id is handled as 128 opaque bytes (NCCL_UNIQUE_ID_BYTES), so this file
// needs no NCCL header or library and builds everywhere. The transfer on top
// of it, NcclKvChannel (client/nccl/nccl_kv_channel.h), is built only with
// CUDA and NCCL.
//
// Thread safety: the functions may be called concurrently (Backend is
// thread-safe); AwaitNcclId blocks the calling thread while it polls.
#ifndef VQKV_CLIENT_NCCL_NCCL_RENDEZVOUS_H_
#define VQKV_CLIENT_NCCL_NCCL_RENDEZVOUS_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/backend.h"

namespace vqkv::client {

// sizeof(ncclUniqueId) == NCCL_UNIQUE_ID_BYTES in nccl.h.
inline constexpr size_t kNcclUniqueIdBytes = 128;
using NcclUniqueIdBytes = std::array<uint8_t, kNcclUniqueIdBytes>;

// A channel name is 1..kMaxNcclChannelBytes bytes (the key "nccl/<channel>"
// must fit a rendezvous key's 256 bytes).
inline constexpr size_t kMaxNcclChannelBytes = 251;

// "nccl/<channel>".
std::string NcclRendezvousKey(absl::string_view channel);

struct NcclAwaitOptions {
  // Wait between polls: starts at initial_poll and doubles up to max_poll.
  absl::Duration initial_poll = absl::Milliseconds(10);
  absl::Duration max_poll = absl::Milliseconds(200);
  // Deadline of one poll (never past the overall timeout).
  absl::Duration call_timeout = absl::Seconds(2);
};

// Publishes `id` under `channel` for `ttl` (the cache caps it at 10 min),
// replacing an id already published there. `timeout` bounds the call.
// Errors: kInvalidArgument for a null backend, a channel not
// 1..kMaxNcclChannelBytes bytes, an id not kNcclUniqueIdBytes bytes, or a ttl
// under 1 ms; otherwise Backend::PutRendezvous's errors (kResourceExhausted,
// kUnavailable, kDeadlineExceeded, kUnauthenticated, ...).
absl::Status PublishNcclId(Backend* backend, absl::string_view channel,
                           absl::Span<const uint8_t> id, absl::Duration ttl,
                           absl::Duration timeout = absl::Seconds(10));

// Waits up to `timeout` for an id to be published under `channel`: polls
// GetRendezvous (at least once, with bounded backoff) until the key is
// found. Absent keys, kUnavailable and per-poll deadlines are retried (the
// peer or the cache may not be up yet).
// Errors: kDeadlineExceeded when no id came within `timeout` (the message
// gives the last poll's outcome); kInvalidArgument for a null backend or a
// bad channel; kDataLoss when the value under the key is not
// kNcclUniqueIdBytes bytes (something else was published there); any other
// error of a poll (kUnauthenticated, kPermissionDenied, kUnimplemented: a
// server without rendezvous) at once.
absl::StatusOr<NcclUniqueIdBytes> AwaitNcclId(
    Backend* backend, absl::string_view channel, absl::Duration timeout,
    const NcclAwaitOptions& options = {});

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_NCCL_NCCL_RENDEZVOUS_H_
