// KiviCodec: KIVI-style asymmetric scalar quantization (Liu et al., "KIVI: A
// Tuning-Free Asymmetric 2bit Quantization for KV Cache", 2024), the
// scalar-quantization peer that VQKV is compared against at equal bits.
//
// Every group of elements is quantized to `bits` bits with its own zero point
// z (the group minimum) and scale s = (max - z) / (2^bits - 1):
//   q = clamp(round((x - z) / s), 0, 2^bits - 1),   x' = q * s + z.
// z and s are stored as binary16 and the quantizer uses the stored (rounded)
// values, so decode reproduces exactly what encode assumed. z is rounded to
// nearest and s rounded up, so |x - x'| <= s/2 + |min - z| for every element.
// A constant group has s = 0 and decodes to z.
//
// Grouping (as in KIVI):
//   keys   per channel: for every (layer, kv_head, channel) the values along
//          the token axis are cut into groups of G tokens. Token group j holds
//          tokens [j*G, min((j+1)*G, tokens)), so a block with fewer than G
//          tokens is one (partial) group, and a trailing partial group is
//          allowed; KIVI keeps such tails in fp16, vqkv quantizes them.
//   values per token: every (layer, token, kv_head) vector of head_dim
//          channels is cut into groups of G channels, the last possibly
//          partial when G does not divide head_dim.
//
// Bits per element, side information included (two binary16 per group):
//   keys:   bits + 32 / G                       (full token groups)
//   values: bits + 32 * ceil(head_dim / G) / head_dim
// e.g. bits = 2, G = 32, head_dim = 128: 3 bits/element for both. EncodedBytes
// is exact for any token count, partial groups included.
//
// Payload layout for T tokens (L layers, H kv heads, D head_dim,
// Gk = ceil(T / G) key groups, Gv = ceil(D / G) value groups per vector).
// All binary16 little-endian; sections follow each other with no padding:
//   1. key params:   [layer][key group][kv_head][channel][2] binary16,
//                    element 0 = zero point z, element 1 = scale s
//   2. value params: [layer][token][kv_head][value group][2] binary16
//   3. key codes:    L*T*H*D indices in [layer][token][kv_head][channel]
//                    order, packed `bits` wide (kernels/bitpack.h layout),
//                    PackedBytes(L*T*H*D, bits) bytes
//   4. value codes:  same order and packing as the key codes
//
// Inputs must be finite and within the binary16 range (|x| <= 65504), since
// scales and zero points are binary16; anything else is kInvalidArgument.
//
// Thread safety: immutable after Create; every method may run concurrently.
#ifndef VQKV_KERNELS_BASELINES_KIVI_CODEC_H_
#define VQKV_KERNELS_BASELINES_KIVI_CODEC_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/codec.h"

namespace vqkv {

struct KiviOptions {
  int bits = 2;         // bits per quantized element, 2..8 (KIVI uses 2, 4)
  int group_size = 32;  // G above, 1..65535 (KIVI's default is 32)
};

class KiviCodec final : public Codec {
 public:
  // Errors: kInvalidArgument for an invalid layout, bits outside 2..8 or a
  // group size outside 1..65535.
  static absl::StatusOr<std::unique_ptr<KiviCodec>> Create(
      const KvLayout& layout, const KiviOptions& options);

  CodecId id() const override { return CodecId::kKivi; }
  // "kivi:b=<bits>:g=<group_size>".
  std::string Descriptor() const override;
  const KvLayout& layout() const override { return layout_; }
  uint64_t codebook_hash() const override { return 0; }
  double KeyBitsPerElement() const override;
  double ValueBitsPerElement() const override;
  size_t EncodedBytes(int64_t tokens) const override;

  const KiviOptions& options() const { return options_; }

  // No trained state: validates the arguments and returns OkStatus.
  absl::Status Fit(const float* keys, const float* values, int64_t tokens,
                   const FitOptions& options) override;
  absl::Status Encode(const float* keys, const float* values, int64_t tokens,
                      uint8_t* out, size_t out_bytes) const override;
  // Errors: kInvalidArgument when in_bytes != EncodedBytes(tokens). A payload
  // with corrupted scales decodes to garbage (possibly inf/NaN) without
  // crashing; the block checksum is what detects corruption.
  absl::Status Decode(const uint8_t* in, size_t in_bytes, int64_t tokens,
                      float* keys, float* values) const override;

 private:
  KiviCodec(const KvLayout& layout, const KiviOptions& options)
      : layout_(layout), options_(options) {}

  int64_t KeyGroups(int64_t tokens) const;
  int64_t ValueGroupsPerVector() const;

  KvLayout layout_;
  KiviOptions options_;
};

}  // namespace vqkv

#endif  // VQKV_KERNELS_BASELINES_KIVI_CODEC_H_
