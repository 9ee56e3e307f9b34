// Fp16Codec: the uncompressed reference codec. Keys and values are stored as
// IEEE binary16 (round to nearest even), 16 bits per element, with no side
// information and no trained state.
//
// Payload layout for `tokens` tokens (E = layers * kv_heads * head_dim):
//   bytes [0, 2*tokens*E):          keys   binary16
//   [layer][token][kv_head][dim] bytes [2*tokens*E, 4*tokens*E): values
//   binary16, same order
// Each binary16 is little-endian. Values outside the binary16 range become
// +-infinity and NaN stays NaN, exactly like a float -> half cast.
//
// Thread safety: immutable after Create; every method may run concurrently.
#ifndef VQKV_KERNELS_BASELINES_FP16_CODEC_H_
#define VQKV_KERNELS_BASELINES_FP16_CODEC_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/codec.h"

namespace vqkv {

class Fp16Codec final : public Codec {
 public:
  // Errors: kInvalidArgument for an invalid layout.
  static absl::StatusOr<std::unique_ptr<Fp16Codec>> Create(
      const KvLayout& layout);

  CodecId id() const override { return CodecId::kFp16; }
  std::string Descriptor() const override { return "fp16"; }
  const KvLayout& layout() const override { return layout_; }
  uint64_t codebook_hash() const override { return 0; }
  double KeyBitsPerElement() const override { return 16.0; }
  double ValueBitsPerElement() const override { return 16.0; }
  size_t EncodedBytes(int64_t tokens) const override;

  // No trained state: validates the arguments and returns OkStatus.
  absl::Status Fit(const float* keys, const float* values, int64_t tokens,
                   const FitOptions& options) override;
  absl::Status Encode(const float* keys, const float* values, int64_t tokens,
                      uint8_t* out, size_t out_bytes) const override;
  absl::Status Decode(const uint8_t* in, size_t in_bytes, int64_t tokens,
                      float* keys, float* values) const override;
  // A layer range is a slice of each section: converts only that.
  absl::Status DecodeLayers(const uint8_t* in, size_t in_bytes, int64_t tokens,
                            int first_layer, int num_layers, float* keys,
                            float* values) const override;

 private:
  explicit Fp16Codec(const KvLayout& layout) : layout_(layout) {}

  KvLayout layout_;
};

}  // namespace vqkv

#endif  // VQKV_KERNELS_BASELINES_FP16_CODEC_H_
