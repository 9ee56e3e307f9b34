// Request validation and namespace ids for the KVCache service: everything
// that turns wire messages (proto/vqkv/v1/kvcache.proto) into storage keys,
// with precise errors for bad input.
//
// Thread safety: pure functions.
#ifndef VQKV_SERVICE_VALIDATE_H_
#define VQKV_SERVICE_VALIDATE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/block_format.h"
#include "storage/keys.h"
#include "storage/namespace.h"
#include "vqkv/v1/kvcache.pb.h"

namespace vqkv::service {

// Limits on request sizes (besides the gRPC message size).
inline constexpr size_t kMaxHashesPerRequest = size_t{1} << 20;
inline constexpr size_t kMaxBlocksPerMessage = size_t{1} << 16;
inline constexpr size_t kMaxCodebooksPerRequest = 64;
inline constexpr uint32_t kMaxBlockTokens = storage::kMaxNamespaceBlockTokens;

// The plain-C++ namespace (storage/namespace.h) of a wire namespace.
storage::NamespaceSpec ToNamespaceSpec(const v1::Namespace& ns);

// kInvalidArgument naming the field, e.g. "namespace.head_dim must be in
// 1..65535, got 0". A missing namespace is "namespace is required".
absl::Status ValidateNamespace(const v1::Namespace& ns, bool present);

// storage/namespace.h's canonical encoding and id of ToNamespaceSpec(ns).
std::string CanonicalNamespace(absl::string_view tenant,
                               const v1::Namespace& ns);
storage::NamespaceId ComputeNamespaceId(absl::string_view tenant,
                                        const v1::Namespace& ns);

// A 16-byte block hash. kInvalidArgument "<field>[<index>]: a block hash must
// be exactly 16 bytes, got N".
absl::StatusOr<storage::BlockHash> ParseBlockHash(absl::string_view bytes,
                                                  absl::string_view field,
                                                  size_t index);

// Verifies an encoded block (kernels/block.h VerifyBlock) and checks its
// header against the namespace: layers, kv_heads, head_dim equal;
// 1 <= tokens <= block_tokens; codec_id and codebook_hash equal.
// REQUIRES: ValidateNamespace(ns) is OK.
// Errors (message prefixed with "blocks[<index>]"): VerifyBlock's
// kInvalidArgument / kDataLoss; kInvalidArgument for a header that does not
// match the namespace.
absl::StatusOr<BlockHeader> ValidateBlock(const v1::Namespace& ns,
                                          absl::string_view data, size_t index);

// Checks a codebook file against its declared hash: hash non-zero, the file
// parses (kernels/codebook_set.h CodebookSet::Deserialize, which checks the
// magic, version and the trailer hash) and its content hash equals `hash`.
// Errors (message prefixed with "codebooks[<index>]"): kInvalidArgument for
// hash 0, empty data, a file that is not a codebook set or whose hash is not
// `hash`; kDataLoss for a truncated or corrupted file.
absl::Status ValidateCodebook(uint64_t hash, absl::string_view data,
                              size_t index);

}  // namespace vqkv::service

#endif  // VQKV_SERVICE_VALIDATE_H_
