// Synthetic key/value-like vectors for RVQ tests: Gaussian with a decaying
// per-dimension scale and a few large outlier channels (as real attention
// keys have), optionally rotated by RoPE.
#ifndef VQKV_TESTS_UNIT_KERNELS_RVQ_TEST_DATA_H_
#define VQKV_TESTS_UNIT_KERNELS_RVQ_TEST_DATA_H_

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace vqkv::testing {

// n vectors of dim floats; deterministic for a seed.
inline std::vector<float> KeyLikeVectors(int64_t n, int dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> scale(dim);
  for (int d = 0; d < dim; ++d) {
    scale[d] = 0.2f + 1.5f * std::exp(-3.0f * d / dim);
  }
  // A few outlier channels with a large mean and scale.
  for (int d = 3; d < dim; d += 17) scale[d] *= 4.0f;
  std::vector<float> mean(dim, 0.0f);
  for (int d = 5; d < dim; d += 23) mean[d] = 3.0f;
  std::vector<float> x(static_cast<size_t>(n) * dim);
  for (int64_t i = 0; i < n; ++i) {
    for (int d = 0; d < dim; ++d) {
      x[i * dim + d] = mean[d] + scale[d] * normal(rng);
    }
  }
  return x;
}

enum class RopeLayout { kAdjacentPairs, kHalfRotate };

// Applies RoPE in place: vector i sits at position i % positions; frequency
// index f rotates by pos * base^(-2f/dim).
inline void ApplyRope(std::vector<float>& x, int dim, RopeLayout layout,
                      int positions = 4096, float base = 10000.0f) {
  const int64_t n = static_cast<int64_t>(x.size()) / dim;
  for (int64_t i = 0; i < n; ++i) {
    const double pos = static_cast<double>(i % positions);
    float* v = x.data() + i * dim;
    for (int f = 0; f < dim / 2; ++f) {
      const double theta = pos * std::pow(base, -2.0 * f / dim);
      const float c = static_cast<float>(std::cos(theta));
      const float s = static_cast<float>(std::sin(theta));
      const int a = layout == RopeLayout::kAdjacentPairs ? 2 * f : f;
      const int b =
          layout == RopeLayout::kAdjacentPairs ? 2 * f + 1 : f + dim / 2;
      const float xa = v[a], xb = v[b];
      v[a] = xa * c - xb * s;
      v[b] = xa * s + xb * c;
    }
  }
}

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_UNIT_KERNELS_RVQ_TEST_DATA_H_
