// The packed candidate keys of the tensor-core encoder
// (kernels/cuda/tc_candidate_key.h), on the host: the key order, the
// two-smallest list, and the choice among a vector's candidates, checked
// against the CPU reference on one stage computed the way the kernel does
// (bf16 products with ||r||^2 folded in, four lanes of two candidates).
#include "kernels/cuda/tc_candidate_key.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/rvq_kernels.h"
#include "kernels/fp16.h"

namespace vqkv::cuda {
namespace {

float RoundToBf16(float f) { return Bf16ToFloat(FloatToBf16(f)); }

TEST(TcCandidateKeyTest, CodeBitsHoldEveryPaddedCode) {
  EXPECT_EQ(TcKeyCodeBits(1), 1);
  EXPECT_EQ(TcKeyCodeBits(8), 3);
  EXPECT_EQ(TcKeyCodeBits(9), 4);
  EXPECT_EQ(TcKeyCodeBits(1000), 10);
  EXPECT_EQ(TcKeyCodeBits(1024), 10);
  EXPECT_EQ(TcKeyCodeBits(65536), 16);
  EXPECT_EQ(TcKeyScoreMask(10), 0x7ffffc00u);
  EXPECT_EQ(TcKeyCodeMask(10), 0x3ffu);
}

// Keys order as (truncated score, code); the truncated score is below the
// score by less than 2^(code_bits - 23) of it; the code comes back.
TEST(TcCandidateKeyTest, KeysOrderByTruncatedScoreThenCode) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> score(0.0f, 50.0f);
  for (const int bits : {3, 10, 16}) {
    SCOPED_TRACE(bits);
    const uint32_t mask = TcKeyScoreMask(bits);
    const int codes = 1 << bits;
    for (int i = 0; i < 20000; ++i) {
      // Half the pairs share a score, to exercise the code order.
      const float sa = score(rng), sb = i % 2 == 0 ? sa : score(rng);
      const uint32_t ca = rng() % codes, cb = rng() % codes;
      const uint32_t ka = TcMakeKey(sa, mask, ca), kb = TcMakeKey(sb, mask, cb);
      const float ta = TcKeyScore(ka, bits), tb = TcKeyScore(kb, bits);
      ASSERT_EQ(TcKeyCode(ka, bits), static_cast<int>(ca));
      ASSERT_LE(ta, sa);
      ASSERT_GE(ta * (1.0 + std::ldexp(1.0, bits - 23)), sa);
      const bool key_less = ka < kb;
      const bool pair_less = ta < tb || (ta == tb && ca < cb);
      ASSERT_EQ(key_less, pair_less)
          << sa << " " << ca << " " << sb << " " << cb;
      ASSERT_LT(ka, kTcNoKey);
    }
  }
}

// A squared distance that rounding took below zero reads as its magnitude:
// it stays near the smallest keys instead of wrapping to the largest.
TEST(TcCandidateKeyTest, NegativeRoundingReadsAsMagnitude) {
  const uint32_t mask = TcKeyScoreMask(10);
  const uint32_t tiny_negative = TcMakeKey(-1e-6f, mask, 5);
  EXPECT_EQ(tiny_negative >> 31, 0u);
  EXPECT_LT(tiny_negative, TcMakeKey(1e-3f, mask, 0));
  EXPECT_NEAR(TcKeyScore(tiny_negative, 10), 1e-6f, 1e-9f);
  EXPECT_TRUE(std::isnan(TcKeyScore(
      TcMakeKey(std::numeric_limits<float>::quiet_NaN(), mask, 3), 10)));
}

TEST(TcCandidateKeyTest, PushKeepsTheTwoSmallest) {
  std::mt19937 rng(7);
  for (int round = 0; round < 2000; ++round) {
    const int n = 1 + static_cast<int>(rng() % 40);
    std::vector<uint32_t> keys(n);
    for (uint32_t& k : keys) k = rng() & 0x7fffffffu;
    uint32_t first = kTcNoKey, second = kTcNoKey;
    for (const uint32_t k : keys) TcPushKey(k, first, second);
    std::sort(keys.begin(), keys.end());
    ASSERT_EQ(first, keys[0]);
    ASSERT_EQ(second, n > 1 ? keys[1] : kTcNoKey);
  }
}

// One stage of the kernel's arithmetic on the host: bf16 products of the
// rounded residual and codewords, accumulated from -||r||^2 / 2, keys of
// norms - 2 dot, lane q (of 4) seeing codewords 8t + 2q and 8t + 2q + 1,
// two kept per lane, then TcPickFromKeys with the reference's own float32
// score of each contender.
float ReferenceScore(const float* r, const std::vector<float>& cb,
                     const std::vector<float>& norms, int k, int dim) {
  float score = 0.0f;
  cpu::NearestCodewordRef(r, &cb[static_cast<size_t>(k) * dim], &norms[k], 1,
                          dim, &score);
  return score;
}

int PickLikeTheKernel(const float* r, const std::vector<float>& cb,
                      const std::vector<float>& norms, int K, int dim) {
  float rr = 0.0f;
  for (int d = 0; d < dim; ++d) rr = std::fmaf(r[d], r[d], rr);
  const int padded = (K + 7) / 8 * 8;
  const int bits = TcKeyCodeBits(padded);
  const uint32_t mask = TcKeyScoreMask(bits);
  uint32_t first[4], second[4];
  std::fill(first, first + 4, kTcNoKey);
  std::fill(second, second + 4, kTcNoKey);
  for (int k = 0; k < padded; ++k) {
    double dot = -0.5 * rr;
    float norm = INFINITY;  // padding codewords
    if (k < K) {
      for (int d = 0; d < dim; ++d) {
        dot += static_cast<double>(RoundToBf16(r[d])) *
               RoundToBf16(cb[static_cast<size_t>(k) * dim + d]);
      }
      norm = norms[k];
    }
    const uint32_t key =
        TcMakeKey(std::fmaf(-2.0f, static_cast<float>(dot), norm), mask, k);
    const int lane = k % 8 / 2;
    TcPushKey(key, first[lane], second[lane]);
  }
  uint32_t keys[8];
  for (int q = 0; q < 4; ++q) {
    keys[2 * q] = first[q];
    keys[2 * q + 1] = second[q];
  }
  return TcPickFromKeys(
      keys, 8, K, bits, rr, [&](int k) { return norms[k]; },
      [&](int k) { return ReferenceScore(r, cb, norms, k, dim); });
}

struct Codebook {
  std::vector<float> cb, norms;
};

Codebook RandomCodebook(int K, int dim, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Codebook c;
  c.cb.resize(static_cast<size_t>(K) * dim);
  for (float& v : c.cb) v = normal(rng);
  c.norms.resize(K);
  for (int k = 0; k < K; ++k) {
    float n = 0.0f;
    for (int d = 0; d < dim; ++d) {
      n = std::fmaf(c.cb[static_cast<size_t>(k) * dim + d],
                    c.cb[static_cast<size_t>(k) * dim + d], n);
    }
    c.norms[k] = n;
  }
  return c;
}

// On random codebooks (the paper's K and dims, and a K that is not a
// multiple of the tile) the pick is the reference's on almost every vector
// and never further from the nearest than the encoder's bound.
TEST(TcCandidateKeyTest, PickMatchesTheReferenceUpToNearTies) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [K, dim] : {std::pair{1024, 64}, std::pair{512, 128},
                               std::pair{1000, 64}, std::pair{37, 17}}) {
    SCOPED_TRACE(testing::Message() << "K " << K << " dim " << dim);
    const Codebook c = RandomCodebook(K, dim, rng);
    int identical = 0;
    constexpr int kVectors = 400;
    for (int i = 0; i < kVectors; ++i) {
      std::vector<float> x(dim);
      for (float& v : x) v = normal(rng);
      uint16_t ref = 0;
      cpu::RvqEncodeGreedyRef(x.data(), 1, dim, c.cb.data(), c.norms.data(), 1,
                              K, &ref);
      const int got = PickLikeTheKernel(x.data(), c.cb, c.norms, K, dim);
      ASSERT_GE(got, 0);
      ASSERT_LT(got, K);
      identical += got == ref;
      float rr = 0.0f, max_norm = 0.0f;
      for (const float v : x) rr += v * v;
      for (const float n : c.norms) max_norm = std::max(max_norm, n);
      EXPECT_LE(ReferenceScore(x.data(), c.cb, c.norms, got, dim) -
                    ReferenceScore(x.data(), c.cb, c.norms, ref, dim),
                kTcScoreErrorPerNorm * std::sqrt(rr * max_norm));
    }
    EXPECT_GE(identical, kVectors * 98 / 100);
  }
}

// Codewords in tight clusters: several candidates fall within the bf16
// error of the lowest and are rescored in float32; the pick is the
// reference's whenever the reference's codeword is among the candidates.
TEST(TcCandidateKeyTest, NearTiesAreRescoredInFloat32) {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  constexpr int kK = 256, kDim = 64;
  Codebook c = RandomCodebook(kK, kDim, rng);
  for (int k = 0; k < kK; ++k) {
    float n = 0.0f;
    for (int d = 0; d < kDim; ++d) {
      float& v = c.cb[static_cast<size_t>(k) * kDim + d];
      if (k % 8 != 0) {
        v = c.cb[static_cast<size_t>(k / 8 * 8) * kDim + d] *
            (1.0f + 1e-3f * normal(rng));
      }
      n = std::fmaf(v, v, n);
    }
    c.norms[k] = n;
  }
  int identical = 0;
  constexpr int kVectors = 300;
  for (int i = 0; i < kVectors; ++i) {
    // Near a codeword, so that its cluster holds the contenders.
    const int target = static_cast<int>(rng() % kK);
    std::vector<float> x(kDim);
    for (int d = 0; d < kDim; ++d) {
      x[d] = c.cb[static_cast<size_t>(target) * kDim + d] + 0.01f * normal(rng);
    }
    uint16_t ref = 0;
    cpu::RvqEncodeGreedyRef(x.data(), 1, kDim, c.cb.data(), c.norms.data(), 1,
                            kK, &ref);
    identical += PickLikeTheKernel(x.data(), c.cb, c.norms, kK, kDim) == ref;
  }
  // A cluster has 8 codewords over 4 lanes of 2: each lane keeps both of
  // its own, so the reference's codeword is always a candidate.
  EXPECT_EQ(identical, kVectors);
}

TEST(TcCandidateKeyTest, NoCandidatePicksCodewordZero) {
  const int bits = TcKeyCodeBits(16);
  const uint32_t mask = TcKeyScoreMask(bits);
  auto norm = [](int) { return 1.0f; };
  auto rescore = [](int k) { return static_cast<float>(k); };
  uint32_t empty[8];
  std::fill(empty, empty + 8, kTcNoKey);
  EXPECT_EQ(TcPickFromKeys(empty, 8, 16, bits, 1.0f, norm, rescore), 0);
  uint32_t nan_keys[8];
  for (int i = 0; i < 8; ++i) {
    nan_keys[i] =
        TcMakeKey(std::numeric_limits<float>::quiet_NaN(), mask, i + 3);
  }
  EXPECT_EQ(TcPickFromKeys(nan_keys, 8, 16, bits, NAN, norm, rescore), 0);
  // A padding code (>= K) is never picked, however low its key.
  uint32_t keys[8];
  std::fill(keys, keys + 8, kTcNoKey);
  keys[0] = TcMakeKey(0.0f, mask, 14);
  keys[1] = TcMakeKey(5.0f, mask, 9);
  EXPECT_EQ(TcPickFromKeys(keys, 8, 12, bits, 1.0f, norm, rescore), 9);
}

}  // namespace
}  // namespace vqkv::cuda
