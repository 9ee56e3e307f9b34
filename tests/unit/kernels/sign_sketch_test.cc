#include "kernels/sign_sketch.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace vqkv {
namespace {

TEST(SignSketchTest, RejectsBadShapes) {
  EXPECT_FALSE(SignSketch::Create(0, 64).ok());
  EXPECT_FALSE(SignSketch::Create(64, 0).ok());
  EXPECT_FALSE(SignSketch::Create(64, 12).ok());  // not a multiple of 8
  EXPECT_FALSE(SignSketch::Create(64, 4104).ok());
  EXPECT_TRUE(SignSketch::Create(64, 8).ok());
}

TEST(SignSketchTest, MatrixIsFixedAndStandardized) {
  absl::StatusOr<SignSketch> a = SignSketch::Create(64, 64);
  absl::StatusOr<SignSketch> b = SignSketch::Create(64, 64);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->matrix(), b->matrix());
  // Golden entries (computed independently by a Python transcription of the
  // generator): the matrix is part of the block format, since a block coded
  // on one machine is decoded on another, so it must never change.
  EXPECT_EQ(a->matrix()[0], 1.1809027194976807f);
  EXPECT_EQ(a->matrix()[1], 0.27594369649887085f);
  EXPECT_EQ(a->matrix()[4095], -1.4580724239349365f);
  double sum = 0, sq = 0;
  for (float e : a->matrix()) {
    sum += e;
    sq += double(e) * e;
  }
  const double n = static_cast<double>(a->matrix().size());
  EXPECT_NEAR(sum / n, 0.0, 0.05);
  EXPECT_NEAR(sq / n, 1.0, 0.08);
  absl::StatusOr<SignSketch> other = SignSketch::Create(64, 64, 7);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(a->matrix(), other->matrix());
}

TEST(SignSketchTest, CodeLayout) {
  absl::StatusOr<SignSketch> s = SignSketch::Create(4, 16);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->BytesPerVector(), 4u);
  const std::vector<float> r = {1, -2, 0.5, 3};
  std::vector<uint8_t> code(4);
  s->Encode(r.data(), 1, code.data());
  // Scale: sqrt(pi/2)/16 * ||r|| in binary16.
  const double norm = std::sqrt(1 + 4 + 0.25 + 9);
  const uint16_t h = static_cast<uint16_t>(code[0] | (code[1] << 8));
  const float scale_expected =
      static_cast<float>(std::sqrt(std::acos(-1.0) / 2) / 16 * norm);
  EXPECT_NEAR(
      std::ldexp(1.0, ((h >> 10) & 0x1f) - 15) * (1 + (h & 0x3ff) / 1024.0),
      scale_expected, scale_expected * 1e-3);
  // Sign bit b is (row b . r >= 0).
  for (int b = 0; b < 16; ++b) {
    double dot = 0;
    for (int d = 0; d < 4; ++d) dot += s->matrix()[b * 4 + d] * r[d];
    EXPECT_EQ((code[2 + b / 8] >> (b % 8)) & 1, dot >= 0 ? 1 : 0) << b;
  }
}

TEST(SignSketchTest, ZeroResidualDecodesToNothing) {
  absl::StatusOr<SignSketch> s = SignSketch::Create(8, 8);
  ASSERT_TRUE(s.ok());
  const std::vector<float> zero(8, 0.0f);
  std::vector<uint8_t> code(s->BytesPerVector());
  s->Encode(zero.data(), 1, code.data());
  std::vector<float> out = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<float> before = out;
  s->DecodeAdd(code.data(), 1, out.data());
  EXPECT_EQ(out, before);
}

// The reason the sketch exists: inner products with the decoded residual
// are unbiased over the choice of matrix (QJL's guarantee), where a VQ
// reconstruction that misses a direction u gives <u, r'> = 0. For one fixed
// matrix the estimate of a direction is off by O(1/sqrt(bits)).
TEST(SignSketchTest, InnerProductsAreUnbiasedOverMatrices) {
  const int dim = 32;
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0, 1);
  const int n = 200, seeds = 60;
  std::vector<float> r(static_cast<size_t>(n) * dim);
  for (int i = 0; i < n; ++i) {
    for (int d = 0; d < dim; ++d) r[i * dim + d] = 0.3f * g(rng);
    r[i * dim + 5] += 1.0f;  // the direction u = e_5
  }
  double truth = 0, sketch = 0, worst_seed = 0;
  for (int i = 0; i < n; ++i) truth += r[i * dim + 5];
  truth /= n;
  for (int seed = 0; seed < seeds; ++seed) {
    absl::StatusOr<SignSketch> s = SignSketch::Create(dim, 64, seed);
    ASSERT_TRUE(s.ok());
    std::vector<uint8_t> code(n * s->BytesPerVector());
    s->Encode(r.data(), n, code.data());
    std::vector<float> est(r.size(), 0.0f);
    s->DecodeAdd(code.data(), n, est.data());
    double mean = 0;
    for (int i = 0; i < n; ++i) mean += est[i * dim + 5];
    mean /= n;
    sketch += mean / seeds;
    worst_seed = std::max(worst_seed, std::abs(mean - truth));
  }
  EXPECT_NEAR(sketch, truth, 0.04 * truth);
  EXPECT_LT(worst_seed, 0.5 * truth);  // never the VQ miss (estimate 0)
}

}  // namespace
}  // namespace vqkv
