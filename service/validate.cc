#include "service/validate.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/block.h"
#include "kernels/codebook_set.h"

namespace vqkv::service {
namespace {

absl::Status Prefixed(const absl::Status& s, absl::string_view prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, ": ", s.message()));
}

}  // namespace

storage::NamespaceSpec ToNamespaceSpec(const v1::Namespace& ns) {
  storage::NamespaceSpec spec;
  spec.model_id = ns.model_id();
  spec.weight_revision = ns.weight_revision();
  spec.codec = ns.codec();
  spec.codec_id = ns.codec_id();
  spec.codebook_hash = ns.codebook_hash();
  spec.block_tokens = ns.block_tokens();
  spec.layers = ns.layers();
  spec.kv_heads = ns.kv_heads();
  spec.head_dim = ns.head_dim();
  spec.dtype = static_cast<storage::KvDtype>(ns.dtype());
  return spec;
}

absl::Status ValidateNamespace(const v1::Namespace& ns, bool present) {
  if (!present) return absl::InvalidArgumentError("namespace is required");
  return storage::ValidateNamespaceSpec(ToNamespaceSpec(ns));
}

std::string CanonicalNamespace(absl::string_view tenant,
                               const v1::Namespace& ns) {
  return storage::CanonicalNamespace(tenant, ToNamespaceSpec(ns));
}

storage::NamespaceId ComputeNamespaceId(absl::string_view tenant,
                                        const v1::Namespace& ns) {
  return storage::ComputeNamespaceId(tenant, ToNamespaceSpec(ns));
}

absl::StatusOr<storage::BlockHash> ParseBlockHash(absl::string_view bytes,
                                                  absl::string_view field,
                                                  size_t index) {
  if (bytes.size() != storage::BlockHash::kSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, "[", index, "]: a block hash must be exactly 16 bytes, got ",
        bytes.size()));
  }
  return storage::BlockHash::FromBytes(bytes);
}

absl::StatusOr<BlockHeader> ValidateBlock(const v1::Namespace& ns,
                                          absl::string_view data,
                                          size_t index) {
  const std::string where = absl::StrCat("blocks[", index, "]");
  auto header =
      VerifyBlock(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  if (!header.ok()) return Prefixed(header.status(), where);
  const BlockHeader& h = *header;
  auto mismatch = [&](absl::string_view field, uint64_t got,
                      uint64_t want) -> absl::Status {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": header ", field, " is ", got,
                     " but the namespace has ", want));
  };
  if (h.layers != ns.layers()) return mismatch("layers", h.layers, ns.layers());
  if (h.kv_heads != ns.kv_heads()) {
    return mismatch("kv_heads", h.kv_heads, ns.kv_heads());
  }
  if (h.head_dim != ns.head_dim()) {
    return mismatch("head_dim", h.head_dim, ns.head_dim());
  }
  if (h.tokens < 1 || h.tokens > ns.block_tokens()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": header tokens is ", h.tokens,
                     " but the namespace allows 1..", ns.block_tokens()));
  }
  if (h.codec_id != ns.codec_id()) {
    return mismatch("codec_id", h.codec_id, ns.codec_id());
  }
  if (h.codebook_hash != ns.codebook_hash()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": header codebook_hash is ", absl::Hex(h.codebook_hash),
        " but the namespace has ", absl::Hex(ns.codebook_hash())));
  }
  return h;
}

absl::Status ValidateCodebook(uint64_t hash, absl::string_view data,
                              size_t index) {
  const std::string where = absl::StrCat("codebooks[", index, "]");
  if (hash == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": hash must be non-zero"));
  }
  if (data.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": data must not be empty"));
  }
  auto set =
      CodebookSet::Deserialize(std::string_view(data.data(), data.size()));
  if (!set.ok()) {
    // Deserialize says kFailedPrecondition for an unsupported version: for
    // the registry that is a file it cannot accept, i.e. a bad argument.
    const absl::StatusCode code =
        set.status().code() == absl::StatusCode::kFailedPrecondition
            ? absl::StatusCode::kInvalidArgument
            : set.status().code();
    return absl::Status(code,
                        absl::StrCat(where, ": ", set.status().message()));
  }
  auto actual = set->Hash();
  if (!actual.ok()) return Prefixed(actual.status(), where);
  if (*actual != hash) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": declared hash ", absl::Hex(hash),
                     " but the file's content hash is ", absl::Hex(*actual)));
  }
  return absl::OkStatus();
}

}  // namespace vqkv::service
