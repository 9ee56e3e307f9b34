#include "kernels/sign_sketch.h"

#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "kernels/fp16.h"

namespace vqkv {
namespace {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

absl::StatusOr<SignSketch> SignSketch::Create(int dim, int bits,
                                              uint64_t seed) {
  if (dim < 1 || dim > 65535 || bits < 8 || bits > 4096 || bits % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sign sketch needs dim in 1..65535 and bits a multiple "
                     "of 8 in 8..4096, got dim ",
                     dim, ", bits ", bits));
  }
  SignSketch s;
  s.dim_ = dim;
  s.bits_ = bits;
  s.s_.resize(static_cast<size_t>(bits) * dim);
  uint64_t state = seed;
  constexpr int64_t kOne = int64_t{1} << 24;
  for (float& e : s.s_) {
    int64_t sum = 0;
    for (int i = 0; i < 12; ++i) {
      sum += static_cast<int64_t>(SplitMix64(&state) >> 40);
    }
    // Exact in double; one correctly rounded conversion to float.
    e = static_cast<float>(static_cast<double>(sum - 6 * kOne) /
                           static_cast<double>(kOne));
  }
  return s;
}

void SignSketch::Encode(const float* r, int64_t n, uint8_t* out) const {
  const double kScale = std::sqrt(std::numbers::pi / 2) / bits_;
  for (int64_t i = 0; i < n; ++i) {
    const float* x = r + i * dim_;
    uint8_t* o = out + i * BytesPerVector();
    double norm = 0;
    for (int d = 0; d < dim_; ++d) norm += double(x[d]) * x[d];
    const uint16_t h =
        FloatToHalfRef(static_cast<float>(kScale * std::sqrt(norm)));
    o[0] = static_cast<uint8_t>(h & 0xff);
    o[1] = static_cast<uint8_t>(h >> 8);
    uint8_t* signs = o + 2;
    for (int b = 0; b < bits_ / 8; ++b) signs[b] = 0;
    for (int b = 0; b < bits_; ++b) {
      const float* row = s_.data() + static_cast<size_t>(b) * dim_;
      float dot = 0;
      for (int d = 0; d < dim_; ++d) dot += row[d] * x[d];
      if (dot >= 0) signs[b / 8] |= static_cast<uint8_t>(1u << (b % 8));
    }
  }
}

void SignSketch::DecodeAdd(const uint8_t* in, int64_t n, float* out) const {
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* c = in + i * BytesPerVector();
    const float scale =
        HalfToFloatRef(static_cast<uint16_t>(c[0] | (uint16_t{c[1]} << 8)));
    if (scale == 0) continue;
    float* y = out + i * dim_;
    const uint8_t* signs = c + 2;
    for (int b = 0; b < bits_; ++b) {
      const float w = (signs[b / 8] >> (b % 8)) & 1 ? scale : -scale;
      const float* row = s_.data() + static_cast<size_t>(b) * dim_;
      for (int d = 0; d < dim_; ++d) y[d] += w * row[d];
    }
  }
}

}  // namespace vqkv
