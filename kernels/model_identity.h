// The identity of the model a codebook set was fitted for: its GGUF
// architecture, its KV layout, and a 64-bit fingerprint of the model file
// (computed by model/fingerprint.h; kernels only stores and compares it).
//
// Codebooks fitted on one model's K/V are wrong for another model's, often
// silently (same layout, different statistics), so a codebook file records
// this identity (docs/CODEBOOK_FORMAT.md, version 2) and the tools refuse a
// model whose identity differs (CodebookSet::CheckModel).
//
// Thread safety: a plain value type.
#ifndef VQKV_KERNELS_MODEL_IDENTITY_H_
#define VQKV_KERNELS_MODEL_IDENTITY_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/codec.h"

namespace vqkv {

// Longest architecture name a codebook file can hold.
inline constexpr int kMaxArchitectureBytes = 32;

struct ModelIdentity {
  // GGUF general.architecture, e.g. "llama": 1..32 printable ASCII bytes
  // (0x21..0x7e).
  std::string architecture;
  KvLayout layout;
  // model::ModelFingerprint of the model file; any value, 0 included.
  uint64_t fingerprint = 0;

  // kInvalidArgument naming the offending field.
  absl::Status Validate() const;
  // "llama 30x3x64 model fingerprint 0123456789abcdef": the form errors and
  // `vqkv` messages use.
  std::string ToString() const;
  bool operator==(const ModelIdentity&) const = default;
};

}  // namespace vqkv

#endif  // VQKV_KERNELS_MODEL_IDENTITY_H_
