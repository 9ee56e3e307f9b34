// Block hashes of a token stream: the chained XXH3-128 that names every
// cached block, so that "the longest cached prefix" is one batched lookup
// and two processes, machines or language bindings that see the same tokens
// compute the same names. docs/DESIGN.md ("Block hash chain") specifies the
// bytes; tests/unit/client/hash_test.cc holds golden vectors and
// tests/unit/client/hash_reference.py reimplements it in Python.
//
//   seed  = 0x766B7176 ("vqkv" as little-endian u32), for every hash below
//   ns    = storage::ComputeNamespaceId("", namespace)   (16 bytes)
//   h[-1] = XXH3-128(seed, "vqkv.chain.v1" || ns || u32(len(salt)) || salt)
//   h[i]  = XXH3-128(seed, h[i-1] || u32(block_tokens)
//                          || tokens[i*B .. (i+1)*B) as u32 little-endian)
// with every 128-bit hash written high 64 bits big-endian, then low 64 bits
// big-endian (XXH128_canonical_t). Only full blocks are hashed: a partial
// last block is never published, since its KV changes as tokens arrive.
//
// Thread safety: pure functions.
#ifndef VQKV_CLIENT_HASH_H_
#define VQKV_CLIENT_HASH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "storage/keys.h"
#include "storage/namespace.h"

namespace vqkv::client {

using storage::BlockHash;
using storage::NamespaceId;

inline constexpr uint64_t kHashSeed = 0x766B7176;  // "vqkv"

// h[-1]: the chain's root for (namespace id, salt).
BlockHash ChainRoot(const NamespaceId& ns_digest, absl::string_view salt);

// One hash per full block of `tokens` (tokens.size() / block_tokens of
// them), chained from ChainRoot(ns_digest, salt).
// Errors: kInvalidArgument for block_tokens < 1 or a negative token id
// (named with its position).
absl::StatusOr<std::vector<BlockHash>> HashChain(
    absl::Span<const int32_t> tokens, int64_t block_tokens,
    absl::string_view salt, const NamespaceId& ns_digest);

// The same for a namespace: ns_digest = ComputeNamespaceId("", ns), and
// block_tokens = ns.block_tokens.
absl::StatusOr<std::vector<BlockHash>> HashChain(
    absl::Span<const int32_t> tokens, absl::string_view salt,
    const storage::NamespaceSpec& ns);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_HASH_H_
