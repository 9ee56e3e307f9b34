#include "kernels/rope.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace vqkv {
namespace {

std::vector<float> RandomVector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

double Dot(const float* a, const float* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(a[i]) * b[i];
  return s;
}

TEST(RopeSpecTest, ValidateNamesTheField) {
  EXPECT_TRUE((RopeSpec{10000.0, 64}).Validate(64).ok());
  EXPECT_TRUE((RopeSpec{500000.0, 32, RopePairs::kHalf}).Validate(64).ok());
  EXPECT_NE((RopeSpec{1.0, 64}).Validate(64).message().find("theta"),
            std::string::npos);
  EXPECT_FALSE((RopeSpec{NAN, 64}).Validate(64).ok());
  EXPECT_NE((RopeSpec{10000.0, 66}).Validate(64).message().find("rotary"),
            std::string::npos);
  EXPECT_FALSE((RopeSpec{10000.0, 31}).Validate(64).ok());
  EXPECT_FALSE((RopeSpec{10000.0, 0}).Validate(64).ok());
  EXPECT_FALSE(
      (RopeSpec{10000.0, 64, static_cast<RopePairs>(2)}).Validate(64).ok());
  EXPECT_EQ((RopeSpec{10000.0, 64}).ToString(),
            "theta 10000, 64 dims, adjacent pairs");
}

// Pair i of the adjacent layout at position p rotates by p * theta^(-2i/d).
TEST(RopeTest, AdjacentPairsRotateByTheirFrequency) {
  const Rope rope(8, RopeSpec{100.0, 8});
  std::vector<float> x = {1, 0, 1, 0, 1, 0, 1, 0};
  rope.Apply(x.data(), 1, 3);
  for (int i = 0; i < 4; ++i) {
    const double angle = 3 * std::pow(100.0, -2.0 * i / 8);
    EXPECT_NEAR(x[2 * i], std::cos(angle), 1e-6) << i;
    EXPECT_NEAR(x[2 * i + 1], std::sin(angle), 1e-6) << i;
  }
}

// The half layout is the adjacent one with dimensions permuted: pair i is
// (i, i + d/2) instead of (2i, 2i+1). Past rot_dims nothing moves.
TEST(RopeTest, HalfLayoutIsAdjacentLayoutPermuted) {
  constexpr int kDim = 16, kRot = 12;
  const Rope adjacent(kDim, RopeSpec{10000.0, kRot, RopePairs::kAdjacent});
  const Rope half(kDim, RopeSpec{10000.0, kRot, RopePairs::kHalf});
  const std::vector<float> x = RandomVector(kDim, 1);
  std::vector<float> a = x, h(kDim);
  // h in the half layout holds the same pairs as a.
  for (int i = 0; i < kRot / 2; ++i) {
    h[i] = x[2 * i];
    h[i + kRot / 2] = x[2 * i + 1];
  }
  for (int d = kRot; d < kDim; ++d) h[d] = x[d];
  adjacent.Apply(a.data(), 1, 77);
  half.Apply(h.data(), 1, 77);
  for (int i = 0; i < kRot / 2; ++i) {
    EXPECT_EQ(h[i], a[2 * i]);
    EXPECT_EQ(h[i + kRot / 2], a[2 * i + 1]);
  }
  for (int d = kRot; d < kDim; ++d) {
    EXPECT_EQ(a[d], x[d]);
    EXPECT_EQ(h[d], x[d]);
  }
}

// ReorderRopePairs moves whole pairs: rotating in one layout then reordering
// equals reordering then rotating in the other, and the two directions
// undo each other exactly.
TEST(RopeTest, ReorderRopePairsMapsOneLayoutOntoTheOther) {
  constexpr int kDim = 16, kRot = 12, kHeads = 3;
  const Rope adjacent(kDim, RopeSpec{10000.0, kRot, RopePairs::kAdjacent});
  const Rope half(kDim, RopeSpec{10000.0, kRot, RopePairs::kHalf});
  const std::vector<float> x = RandomVector(kHeads * kDim, 2);
  std::vector<float> h = x;
  ReorderRopePairs(h.data(), kHeads, kDim, kRot, RopePairs::kAdjacent,
                   RopePairs::kHalf);
  for (int v = 0; v < kHeads; ++v) {
    for (int i = 0; i < kRot / 2; ++i) {
      EXPECT_EQ(h[v * kDim + i], x[v * kDim + 2 * i]);
      EXPECT_EQ(h[v * kDim + i + kRot / 2], x[v * kDim + 2 * i + 1]);
    }
    for (int d = kRot; d < kDim; ++d)
      EXPECT_EQ(h[v * kDim + d], x[v * kDim + d]);
  }
  std::vector<float> a = x;
  adjacent.Apply(a.data(), kHeads, 300);
  half.Apply(h.data(), kHeads, 300);
  ReorderRopePairs(h.data(), kHeads, kDim, kRot, RopePairs::kHalf,
                   RopePairs::kAdjacent);
  EXPECT_EQ(h, a);
  std::vector<float> same = x;
  ReorderRopePairs(same.data(), kHeads, kDim, kRot, RopePairs::kHalf,
                   RopePairs::kHalf);
  EXPECT_EQ(same, x);
}

// What the client relies on: Invert undoes Apply, and <Rq, Rk> depends on
// the positions' difference only, so coding un-rotated keys loses nothing.
TEST(RopeTest, InvertUndoesApplyAndDotsDependOnDistance) {
  for (RopePairs pairs : {RopePairs::kAdjacent, RopePairs::kHalf}) {
    const Rope rope(64, RopeSpec{10000.0, 64, pairs});
    const std::vector<float> x = RandomVector(3 * 64, 2);
    std::vector<float> y = x;
    rope.Apply(y.data(), 3, 40000);
    rope.Invert(y.data(), 3, 40000);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-4);

    const std::vector<float> q = RandomVector(64, 3);
    const std::vector<float> k = RandomVector(64, 4);
    std::vector<float> q1 = q, k1 = k, q2 = q, k2 = k;
    rope.Apply(q1.data(), 1, 100);
    rope.Apply(k1.data(), 1, 90);
    rope.Apply(q2.data(), 1, 5010);
    rope.Apply(k2.data(), 1, 5000);
    EXPECT_NEAR(Dot(q1.data(), k1.data(), 64), Dot(q2.data(), k2.data(), 64),
                1e-3);
  }
}

TEST(RopeTest, BlockFormsMatchTokenByToken) {
  constexpr int kLayers = 3, kHeads = 2, kDim = 32;
  // A block of 64 tokens far into a long context: the recurrence's drift.
  constexpr int64_t kTokens = 64, kFirst = 65536;
  const Rope rope(kDim, RopeSpec{10000.0, 24});
  const std::vector<float> x =
      RandomVector(size_t{kLayers} * kTokens * kHeads * kDim, 5);
  std::vector<float> block = x, tokens = x;
  rope.ApplyBlock(block.data(), kLayers, kTokens, kHeads, kFirst);
  for (int l = 0; l < kLayers; ++l) {
    for (int64_t t = 0; t < kTokens; ++t) {
      rope.Apply(tokens.data() + (l * kTokens + t) * kHeads * kDim, kHeads,
                 kFirst + t);
    }
  }
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(block[i], tokens[i], 2e-6);
  rope.InvertBlock(block.data(), kLayers, kTokens, kHeads, kFirst);
  for (int l = 0; l < kLayers; ++l) {
    for (int64_t t = 0; t < kTokens; ++t) {
      rope.Invert(tokens.data() + (l * kTokens + t) * kHeads * kDim, kHeads,
                  kFirst + t);
    }
  }
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_NEAR(block[i], tokens[i], 2e-6);
    EXPECT_NEAR(block[i], x[i], 1e-5);
  }
}

}  // namespace
}  // namespace vqkv
