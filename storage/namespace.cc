#include "storage/namespace.h"

#include <xxhash.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "base/coding.h"

namespace vqkv::storage {

absl::Status ValidateNamespaceSpec(const NamespaceSpec& ns) {
  if (ns.model_id.empty() || ns.model_id.size() > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "namespace.model_id must be 1..256 bytes, got ", ns.model_id.size()));
  }
  if (ns.weight_revision.size() > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace.weight_revision must be at most 256 bytes, "
                     "got ",
                     ns.weight_revision.size()));
  }
  if (ns.codec.empty() || ns.codec.size() > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "namespace.codec must be 1..1024 bytes, got ", ns.codec.size()));
  }
  if (ns.codec_id == 0) {
    return absl::InvalidArgumentError("namespace.codec_id must be non-zero");
  }
  if (ns.block_tokens < 1 || ns.block_tokens > kMaxNamespaceBlockTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace.block_tokens must be in 1..",
                     kMaxNamespaceBlockTokens, ", got ", ns.block_tokens));
  }
  const struct {
    const char* name;
    uint32_t value;
  } dims[] = {{"layers", ns.layers},
              {"kv_heads", ns.kv_heads},
              {"head_dim", ns.head_dim}};
  for (const auto& d : dims) {
    if (d.value < 1 || d.value > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "namespace.", d.name, " must be in 1..65535, got ", d.value));
    }
  }
  const uint32_t dtype = static_cast<uint32_t>(ns.dtype);
  if (dtype < 1 || dtype > 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "namespace.dtype must be FLOAT16, BFLOAT16 or FLOAT32, got ", dtype));
  }
  return absl::OkStatus();
}

std::string CanonicalNamespace(absl::string_view tenant,
                               const NamespaceSpec& ns) {
  std::string out = "vqkv.ns.v1";
  base::PutLengthPrefixed(&out, tenant);
  base::PutLengthPrefixed(&out, ns.model_id);
  base::PutLengthPrefixed(&out, ns.weight_revision);
  base::PutLengthPrefixed(&out, ns.codec);
  base::PutFixed32(&out, ns.codec_id);
  base::PutFixed64(&out, ns.codebook_hash);
  base::PutFixed32(&out, ns.block_tokens);
  base::PutFixed32(&out, ns.layers);
  base::PutFixed32(&out, ns.kv_heads);
  base::PutFixed32(&out, ns.head_dim);
  base::PutFixed32(&out, static_cast<uint32_t>(ns.dtype));
  return out;
}

NamespaceId ComputeNamespaceId(absl::string_view tenant,
                               const NamespaceSpec& ns) {
  const std::string canonical = CanonicalNamespace(tenant, ns);
  const XXH128_hash_t h = XXH3_128bits(canonical.data(), canonical.size());
  return NamespaceId::FromPair(h.high64, h.low64);
}

}  // namespace vqkv::storage
