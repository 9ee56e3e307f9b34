// A model's identity for codebook files (kernels/model_identity.h): its
// architecture, KV layout and a 64-bit fingerprint of its GGUF file.
//
// The fingerprint is XXH3-64 over the architecture, the architecture's
// hyperparameters (every `<arch>.*` metadata value), every tensor's name,
// shape and element type in file order, and the stored bytes of the first
// layer's K and V projection weights; the byte string is specified in
// docs/CODEBOOK_FORMAT.md ("Model fingerprint"). It reads a few KB of
// metadata and one layer's K/V weights, never the whole file, and is the
// same for every copy of a file. Quantization counts: another quantization
// of the same model has another fingerprint.
//
// Thread safety: pure functions of an immutable GgufFile.
#ifndef VQKV_MODEL_FINGERPRINT_H_
#define VQKV_MODEL_FINGERPRINT_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/codec.h"
#include "kernels/model_identity.h"
#include "model/gguf.h"

namespace vqkv::model {

// Errors: kInvalidArgument when general.architecture is missing or not a
// string; those of GgufFile::TensorData for the hashed K/V weights.
absl::StatusOr<uint64_t> ModelFingerprint(const GgufFile& gguf);

// The identity of the model in `gguf`, whose KV layout is `layout` (from the
// loaded model's config, e.g. LlamaConfig::kv_layout()). Errors: those of
// ModelFingerprint; kInvalidArgument when the architecture or layout does
// not fit a codebook file (ModelIdentity::Validate).
absl::StatusOr<ModelIdentity> IdentifyModel(const GgufFile& gguf,
                                            const KvLayout& layout);

}  // namespace vqkv::model

#endif  // VQKV_MODEL_FINGERPRINT_H_
