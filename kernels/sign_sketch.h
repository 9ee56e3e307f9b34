// SignSketch: a 1-bit random-projection code of a vector (the QJL transform,
// Zandieh et al., "QJL: 1-Bit Quantized JL Transform for KV Cache
// Quantization", 2024), used for the residual a VQ code leaves of a key.
//
// Why: a k-means codebook reconstructs the part of a key that its
// calibration data spans and drops the rest, so inner products with the
// reconstruction are biased toward zero in the directions calibration never
// saw. For a retrieval query those are exactly the directions that make a
// rare token (a digit of a pass key) stand out, and its attention weight
// collapses (docs/FIDELITY.md, "Where retrieval breaks"). The sketch of the
// residual r is unbiased for every inner product:
//   r' = sqrt(pi/2) / m * ||r|| * S^T sign(S r),  E[<q, r'>] = <q, r>,
// S an m x dim matrix of (near-)Gaussian entries, so coding x as VQ(x) + r'
// removes the bias at m + 16 bits per vector.
//
// S is fixed by (dim, bits, seed) and built with integer arithmetic only
// (each entry a sum of 12 uniform 24-bit integers, centred: Irwin-Hall, unit
// variance), so every machine and language derives the same matrix.
//
// Code of one vector: binary16 scale sqrt(pi/2)/m*||r|| (little-endian), then
// m sign bits, bit i = (S_i . r >= 0), LSB first; BytesPerVector() = 2 + m/8.
//
// Thread safety: immutable after Create; methods are const.
#ifndef VQKV_KERNELS_SIGN_SKETCH_H_
#define VQKV_KERNELS_SIGN_SKETCH_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace vqkv {

class SignSketch {
 public:
  static constexpr uint64_t kDefaultSeed = 0x514a4c31;  // "QJL1"

  // Errors: kInvalidArgument unless 1 <= dim <= 65535 and bits is a multiple
  // of 8 in 8..4096.
  static absl::StatusOr<SignSketch> Create(int dim, int bits,
                                           uint64_t seed = kDefaultSeed);

  int dim() const { return dim_; }
  int bits() const { return bits_; }
  size_t BytesPerVector() const { return 2 + static_cast<size_t>(bits_) / 8; }
  // Row-major [bits][dim].
  const std::vector<float>& matrix() const { return s_; }

  // Codes n vectors r [n][dim] into out[0, n * BytesPerVector()).
  void Encode(const float* r, int64_t n, uint8_t* out) const;
  // out[i] += the estimate r'_i of each of n coded vectors.
  void DecodeAdd(const uint8_t* in, int64_t n, float* out) const;

 private:
  SignSketch() = default;
  int dim_ = 0;
  int bits_ = 0;
  std::vector<float> s_;
};

}  // namespace vqkv

#endif  // VQKV_KERNELS_SIGN_SKETCH_H_
