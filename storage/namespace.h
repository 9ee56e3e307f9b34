// The namespace of a stored block, in plain C++: everything that decides
// whether two blocks with the same chain hash may be exchanged (model weights,
// codec and codebooks, block size, KV layout, dtype), and the 16-byte id the
// service and the client derive from it.
//
// The canonical encoding (the bytes hashed; proto/vqkv/v1/kvcache.proto
// Namespace and docs/DESIGN.md give the same text):
//   "vqkv.ns.v1" || str(tenant) || str(model_id) || str(weight_revision)
//   || str(codec) || u32(codec_id) || u64(codebook_hash) || u32(block_tokens)
//   || u32(layers) || u32(kv_heads) || u32(head_dim) || u32(dtype)
// with str(s) = u32 byte length then the bytes, integers little-endian. The
// id is XXH3-128 (seed 0) of it, high 64 bits big-endian in bytes [0, 8), low
// 64 bits big-endian in [8, 16) (XXH128_canonical_t).
//
// The service hashes with the caller's tenant; the client hashes with the
// empty tenant (it does not know the tenant its token maps to) to root its
// block hash chains (client/hash.h).
//
// Thread safety: plain values and pure functions.
#ifndef VQKV_STORAGE_NAMESPACE_H_
#define VQKV_STORAGE_NAMESPACE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "storage/keys.h"

namespace vqkv::storage {

// Numeric values of vqkv.v1.DType.
enum class KvDtype : uint32_t {
  kUnspecified = 0,
  kFloat16 = 1,
  kBfloat16 = 2,
  kFloat32 = 3,
};

struct NamespaceSpec {
  std::string model_id;         // 1..256 bytes
  std::string weight_revision;  // 0..256 bytes
  std::string codec;            // Codec::Descriptor(), 1..1024 bytes
  uint32_t codec_id = 0;        // vqkv::CodecId, non-zero
  uint64_t codebook_hash = 0;   // 0 for codecs without codebooks
  uint32_t block_tokens = 0;    // 1..2^20
  uint32_t layers = 0;          // each 1..65535
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  KvDtype dtype = KvDtype::kUnspecified;  // must be specified

  bool operator==(const NamespaceSpec&) const = default;
};

inline constexpr uint32_t kMaxNamespaceBlockTokens = uint32_t{1} << 20;

// kInvalidArgument naming the field, e.g. "namespace.head_dim must be in
// 1..65535, got 0".
absl::Status ValidateNamespaceSpec(const NamespaceSpec& ns);

// The canonical encoding above.
std::string CanonicalNamespace(absl::string_view tenant,
                               const NamespaceSpec& ns);
// XXH3-128 (seed 0) of CanonicalNamespace(tenant, ns).
NamespaceId ComputeNamespaceId(absl::string_view tenant,
                               const NamespaceSpec& ns);

}  // namespace vqkv::storage

#endif  // VQKV_STORAGE_NAMESPACE_H_
