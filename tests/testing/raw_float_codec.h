// A lossless codec for tests: the payload is K then V as raw float32. Blocks
// made with it have exactly known sizes and decode bit-exactly, so tests of
// the block format, storage and the service don't depend on a real codec.
#ifndef VQKV_TESTS_TESTING_RAW_FLOAT_CODEC_H_
#define VQKV_TESTS_TESTING_RAW_FLOAT_CODEC_H_

#include <cstring>
#include <string>

#include "kernels/codec.h"

namespace vqkv::testing {

class RawFloatCodec : public Codec {
 public:
  explicit RawFloatCodec(KvLayout layout, uint64_t codebook_hash = 0,
                         CodecId id = CodecId::kFp16)
      : layout_(layout), hash_(codebook_hash), id_(id) {}

  CodecId id() const override { return id_; }
  std::string Descriptor() const override { return "raw-f32-test"; }
  const KvLayout& layout() const override { return layout_; }
  uint64_t codebook_hash() const override { return hash_; }
  double KeyBitsPerElement() const override { return 32; }
  double ValueBitsPerElement() const override { return 32; }
  size_t EncodedBytes(int64_t tokens) const override {
    return 2 * tokens * layout_.ElementsPerToken() * sizeof(float);
  }
  absl::Status Fit(const float*, const float*, int64_t,
                   const FitOptions&) override {
    return absl::OkStatus();
  }
  absl::Status Encode(const float* k, const float* v, int64_t tokens,
                      uint8_t* out, size_t out_bytes) const override {
    if (out_bytes < EncodedBytes(tokens)) {
      return absl::InvalidArgumentError("output too small");
    }
    const size_t half = EncodedBytes(tokens) / 2;
    std::memcpy(out, k, half);
    std::memcpy(out + half, v, half);
    return absl::OkStatus();
  }
  absl::Status Decode(const uint8_t* in, size_t in_bytes, int64_t tokens,
                      float* k, float* v) const override {
    if (in_bytes != EncodedBytes(tokens)) {
      return absl::InvalidArgumentError("payload size mismatch");
    }
    const size_t half = in_bytes / 2;
    std::memcpy(k, in, half);
    std::memcpy(v, in + half, half);
    return absl::OkStatus();
  }

 private:
  KvLayout layout_;
  uint64_t hash_;
  CodecId id_;
};

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_TESTING_RAW_FLOAT_CODEC_H_
