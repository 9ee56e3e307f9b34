#include "service/validate.h"

#include <xxhash.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/block.h"
#include "kernels/codebook_set.h"

namespace vqkv::service {
namespace {

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void PutStr(std::string* out, absl::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out->append(s.data(), s.size());
}

absl::Status Prefixed(const absl::Status& s, absl::string_view prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, ": ", s.message()));
}

}  // namespace

absl::Status ValidateNamespace(const v1::Namespace& ns, bool present) {
  if (!present) return absl::InvalidArgumentError("namespace is required");
  if (ns.model_id().empty() || ns.model_id().size() > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "namespace.model_id must be 1..256 bytes, got ", ns.model_id().size()));
  }
  if (ns.weight_revision().size() > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace.weight_revision must be at most 256 bytes, "
                     "got ",
                     ns.weight_revision().size()));
  }
  if (ns.codec().empty() || ns.codec().size() > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "namespace.codec must be 1..1024 bytes, got ", ns.codec().size()));
  }
  if (ns.codec_id() == 0) {
    return absl::InvalidArgumentError("namespace.codec_id must be non-zero");
  }
  if (ns.block_tokens() < 1 || ns.block_tokens() > kMaxBlockTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace.block_tokens must be in 1..", kMaxBlockTokens,
                     ", got ", ns.block_tokens()));
  }
  const struct {
    const char* name;
    uint32_t value;
  } dims[] = {{"layers", ns.layers()},
              {"kv_heads", ns.kv_heads()},
              {"head_dim", ns.head_dim()}};
  for (const auto& d : dims) {
    if (d.value < 1 || d.value > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "namespace.", d.name, " must be in 1..65535, got ", d.value));
    }
  }
  if (ns.dtype() == v1::DTYPE_UNSPECIFIED || !v1::DType_IsValid(ns.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace.dtype must be FLOAT16, BFLOAT16 or FLOAT32, "
                     "got ",
                     static_cast<int>(ns.dtype())));
  }
  return absl::OkStatus();
}

std::string CanonicalNamespace(absl::string_view tenant,
                               const v1::Namespace& ns) {
  std::string out = "vqkv.ns.v1";
  PutStr(&out, tenant);
  PutStr(&out, ns.model_id());
  PutStr(&out, ns.weight_revision());
  PutStr(&out, ns.codec());
  PutU32(&out, ns.codec_id());
  PutU64(&out, ns.codebook_hash());
  PutU32(&out, ns.block_tokens());
  PutU32(&out, ns.layers());
  PutU32(&out, ns.kv_heads());
  PutU32(&out, ns.head_dim());
  PutU32(&out, static_cast<uint32_t>(ns.dtype()));
  return out;
}

storage::NamespaceId ComputeNamespaceId(absl::string_view tenant,
                                        const v1::Namespace& ns) {
  const std::string canonical = CanonicalNamespace(tenant, ns);
  const XXH128_hash_t h = XXH3_128bits(canonical.data(), canonical.size());
  return storage::NamespaceId::FromPair(h.high64, h.low64);
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
