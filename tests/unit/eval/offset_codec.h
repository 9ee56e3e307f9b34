// Test-only codec: stores float32 keys and values verbatim and adds fixed
// offsets when decoding, so a test can tell decoded reads from exact ones.
// With zero offsets it is a lossless float passthrough.
#ifndef VQKV_TESTS_UNIT_EVAL_OFFSET_CODEC_H_
#define VQKV_TESTS_UNIT_EVAL_OFFSET_CODEC_H_

#include <cstring>
#include <string>

#include "kernels/codec.h"

namespace vqkv::eval::testing {

class OffsetCodec : public Codec {
 public:
  OffsetCodec(const KvLayout& layout, float key_offset, float value_offset)
      : layout_(layout), key_offset_(key_offset), value_offset_(value_offset) {}

  CodecId id() const override { return CodecId::kFp16; }
  std::string Descriptor() const override { return "test-offset"; }
  const KvLayout& layout() const override { return layout_; }
  uint64_t codebook_hash() const override { return 0; }
  double KeyBitsPerElement() const override { return 32; }
  double ValueBitsPerElement() const override { return 32; }
  size_t EncodedBytes(int64_t tokens) const override {
    return static_cast<size_t>(2 * tokens * layout_.ElementsPerToken()) *
           sizeof(float);
  }
  absl::Status Fit(const float*, const float*, int64_t,
                   const FitOptions&) override {
    return absl::OkStatus();
  }
  absl::Status Encode(const float* keys, const float* values, int64_t tokens,
                      uint8_t* out, size_t out_bytes) const override {
    if (tokens < 1 || out_bytes < EncodedBytes(tokens)) {
      return absl::InvalidArgumentError("bad sizes");
    }
    const size_t half = EncodedBytes(tokens) / 2;
    std::memcpy(out, keys, half);
    std::memcpy(out + half, values, half);
    ++encode_calls_;
    return absl::OkStatus();
  }
  absl::Status Decode(const uint8_t* in, size_t in_bytes, int64_t tokens,
                      float* keys, float* values) const override {
    if (in_bytes != EncodedBytes(tokens)) {
      return absl::InvalidArgumentError("bad sizes");
    }
    const size_t half = in_bytes / 2;
    std::memcpy(keys, in, half);
    std::memcpy(values, in + half, half);
    const int64_t n = tokens * layout_.ElementsPerToken();
    for (int64_t i = 0; i < n; ++i) {
      keys[i] += key_offset_;
      values[i] += value_offset_;
    }
    return absl::OkStatus();
  }
  int encode_calls() const { return encode_calls_; }

 private:
  KvLayout layout_;
  float key_offset_;
  float value_offset_;
  mutable int encode_calls_ = 0;
};

}  // namespace vqkv::eval::testing

#endif  // VQKV_TESTS_UNIT_EVAL_OFFSET_CODEC_H_
