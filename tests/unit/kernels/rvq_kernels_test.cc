// SIMD RVQ kernels against their scalar references.
#include "kernels/cpu/rvq_kernels.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/rvq_kernels_impl.h"
#include "kernels/fp16.h"

namespace vqkv::cpu {
namespace {

using NearestFn = int (*)(const float*, const float*, const float*, int, int,
                          float*);
using EncodeFn = void (*)(const float*, int64_t, int, const float*,
                          const float*, int, int, uint16_t*);
using DecodeFn = void (*)(const uint16_t*, int64_t, int, const float*, int, int,
                          float*);

struct Level {
  const char* name;
  bool supported;
  NearestFn nearest;
  EncodeFn encode;
  DecodeFn decode;
};

std::vector<Level> Levels() {
  return {
      {"avx2", Features().avx2, NearestCodewordAvx2, RvqEncodeGreedyAvx2,
       RvqDecodeAvx2},
      {"avx512", Features().avx512, NearestCodewordAvx512,
       RvqEncodeGreedyAvx512, RvqDecodeAvx512},
      {"dispatch", true, NearestCodeword, RvqEncodeGreedy, RvqDecode},
  };
}

std::vector<float> Random(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& f : v) f = normal(rng);
  return v;
}

std::vector<float> Norms(const std::vector<float>& cb, int rows, int dim) {
  std::vector<float> n(rows);
  for (int r = 0; r < rows; ++r) {
    float s = 0;
    for (int d = 0; d < dim; ++d) s += cb[r * dim + d] * cb[r * dim + d];
    n[r] = s;
  }
  return n;
}

// Squared distance of x to the sum of the chosen codewords.
double CodeError(const float* x, const uint16_t* codes, int stages,
                 const float* cb, int K, int dim) {
  std::vector<float> y(dim);
  RvqDecodeRef(codes, 1, stages, cb, K, dim, y.data());
  double e = 0;
  for (int d = 0; d < dim; ++d) e += double(x[d] - y[d]) * (x[d] - y[d]);
  return e;
}

// A macro, not a function: GTEST_SKIP must return from the test body itself.
#define SKIP_IF_UNSUPPORTED(level)                                         \
  if (!(level).supported)                                                  \
  GTEST_SKIP() << (level).name << " kernels not tested: this CPU (or the " \
               << "VQKV_SIMD cap) does not support " << (level).name

class RvqKernelsTest : public ::testing::TestWithParam<int> {
 protected:
  const Level& level() const { return levels_[GetParam()]; }
  std::vector<Level> levels_ = Levels();
};

TEST_P(RvqKernelsTest, NearestCodewordMatchesReference) {
  SKIP_IF_UNSUPPORTED(level());
  int mismatches = 0, trials = 0;
  for (int dim : {1, 3, 8, 15, 16, 32, 33, 64, 100, 128}) {
    for (int K : {1, 3, 4, 7, 256, 1024}) {
      const std::vector<float> cb = Random(size_t(K) * dim, dim * 1000 + K);
      const std::vector<float> norms = Norms(cb, K, dim);
      for (int t = 0; t < 20; ++t) {
        const std::vector<float> r = Random(dim, 7 * t + K + dim);
        float ref_score = 0, simd_score = 0;
        const int ref = NearestCodewordRef(r.data(), cb.data(), norms.data(), K,
                                           dim, &ref_score);
        const int got = level().nearest(r.data(), cb.data(), norms.data(), K,
                                        dim, &simd_score);
        ++trials;
        const float tol = 1e-4f * (1.0f + std::fabs(ref_score) + norms[ref]);
        EXPECT_NEAR(simd_score, ref_score, tol) << "dim " << dim << " K " << K;
        if (got != ref) {
          ++mismatches;
          // Only a near-tie may pick another codeword.
          float alt = 0;
          for (int d = 0; d < dim; ++d) alt += r[d] * cb[got * dim + d];
          EXPECT_NEAR(norms[got] - 2 * alt, ref_score, tol)
              << "dim " << dim << " K " << K << ": " << got << " vs " << ref;
        }
      }
    }
  }
  EXPECT_LE(mismatches, trials / 100);
}

TEST_P(RvqKernelsTest, EncodeGreedyMatchesReference) {
  SKIP_IF_UNSUPPORTED(level());
  for (int dim : {7, 32, 64}) {
    const int K = 256, stages = 6;
    const int64_t n = 2000;
    const std::vector<float> cb =
        Random(size_t(stages) * K * dim, 11 + dim, 0.5f);
    const std::vector<float> norms = Norms(cb, stages * K, dim);
    const std::vector<float> x = Random(size_t(n) * dim, 13 + dim);
    std::vector<uint16_t> ref(n * stages), got(n * stages);
    RvqEncodeGreedyRef(x.data(), n, dim, cb.data(), norms.data(), stages, K,
                       ref.data());
    level().encode(x.data(), n, dim, cb.data(), norms.data(), stages, K,
                   got.data());
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) {
      bool same = true;
      for (int s = 0; s < stages; ++s)
        same &= ref[i * stages + s] == got[i * stages + s];
      if (same) continue;
      ++differ;
      const double e_ref =
          CodeError(x.data() + i * dim, ref.data() + i * stages, stages,
                    cb.data(), K, dim);
      const double e_got =
          CodeError(x.data() + i * dim, got.data() + i * stages, stages,
                    cb.data(), K, dim);
      EXPECT_NEAR(e_got, e_ref, 1e-3 * (1 + e_ref)) << "vector " << i;
    }
    EXPECT_LE(differ * 1000, n) << "dim " << dim << ": " << differ << " of "
                                << n << " vectors coded differently";
  }
}

TEST_P(RvqKernelsTest, DecodeMatchesReference) {
  SKIP_IF_UNSUPPORTED(level());
  // Dims below, at and past the kernels' 64-float register chunks, with and
  // without a tail of fewer than 8 floats.
  for (int dim : {1, 5, 16, 31, 64, 72, 128, 133, 256}) {
    const int K = 512, stages = 9;
    const int64_t n = 300;
    const std::vector<float> cb = Random(size_t(stages) * K * dim, dim);
    std::mt19937 rng(dim);
    std::vector<uint16_t> codes(n * stages);
    for (uint16_t& c : codes) c = rng() % K;
    std::vector<float> ref(n * dim), got(n * dim, -1.0f);
    RvqDecodeRef(codes.data(), n, stages, cb.data(), K, dim, ref.data());
    level().decode(codes.data(), n, stages, cb.data(), K, dim, got.data());
    // Every level adds the rows in the reference's order: bit-identical.
    for (int64_t i = 0; i < n * dim; ++i) {
      ASSERT_EQ(got[i], ref[i]) << "dim " << dim << " element " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, RvqKernelsTest, ::testing::Values(0, 1, 2),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(Levels()[info.param].name);
                         });

TEST(ArgminScoreTest, MatchesReferenceIncludingTies) {
  for (int K : {1, 2, 7, 8, 9, 64, 1000, 1024}) {
    std::vector<float> norms = Random(K, K), dots = Random(K, K + 1);
    // Force exact ties between a few entries.
    if (K > 9) {
      norms[9] = norms[K - 1];
      dots[9] = dots[K - 1];
      norms[2] = norms[9];
      dots[2] = dots[9];
    }
    float ref_score = 0, got_score = 0;
    const int ref = ArgminScoreRef(norms.data(), dots.data(), K, &ref_score);
    const int got = ArgminScore(norms.data(), dots.data(), K, &got_score);
    EXPECT_EQ(got, ref) << "K " << K;
    EXPECT_EQ(got_score, ref_score) << "K " << K;
    if (Features().avx2) {
      EXPECT_EQ(ArgminScoreAvx2(norms.data(), dots.data(), K, nullptr), ref);
    }
  }
  // All equal: the lowest index wins.
  std::vector<float> same(37, 1.0f), zero(37, 0.0f);
  EXPECT_EQ(ArgminScore(same.data(), zero.data(), 37, nullptr), 0);
}

TEST(ScoresBelowTest, MatchesReference) {
  for (int K : {1, 7, 8, 9, 64, 130, 1024}) {
    const std::vector<float> norms = Random(K, 3 * K),
                             dots = Random(K, 3 * K + 1);
    for (float limit : {-1e30f, -0.5f, 0.0f, 0.7f, 1e30f}) {
      std::vector<int32_t> ref_idx(K), got_idx(K);
      std::vector<float> ref_s(K), got_s(K);
      const int ref = ScoresBelowRef(norms.data(), dots.data(), K, limit,
                                     ref_idx.data(), ref_s.data());
      const int got = ScoresBelow(norms.data(), dots.data(), K, limit,
                                  got_idx.data(), got_s.data());
      ASSERT_EQ(got, ref) << "K " << K << " limit " << limit;
      ref_idx.resize(ref);
      got_idx.resize(got);
      ref_s.resize(ref);
      got_s.resize(got);
      EXPECT_EQ(got_idx, ref_idx);
      EXPECT_EQ(got_s, ref_s);
      // The reference itself: exactly the k below the limit, in order.
      int expect = 0;
      for (int k = 0; k < K; ++k) {
        if (norms[k] - 2.0f * dots[k] < limit) {
          ASSERT_LT(expect, ref);
          EXPECT_EQ(ref_idx[expect], k);
          ++expect;
        }
      }
      EXPECT_EQ(expect, ref);
      if (Features().avx2) {
        std::vector<int32_t> a_idx(K);
        std::vector<float> a_s(K);
        EXPECT_EQ(ScoresBelowAvx2(norms.data(), dots.data(), K, limit,
                                  a_idx.data(), a_s.data()),
                  ref);
      }
    }
  }
}

TEST(RvqDecodeHalfRefTest, RoundsTheFloatSum) {
  const int K = 16, stages = 3, dim = 10;
  const int64_t n = 20;
  const std::vector<float> cb = Random(size_t(stages) * K * dim, 5, 3.0f);
  std::vector<uint16_t> codes(n * stages);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = (i * 7) % K;
  std::vector<float> f(n * dim);
  std::vector<uint16_t> h(n * dim);
  RvqDecodeRef(codes.data(), n, stages, cb.data(), K, dim, f.data());
  RvqDecodeHalfRef(codes.data(), n, stages, cb.data(), K, dim, h.data());
  for (int64_t i = 0; i < n * dim; ++i) EXPECT_EQ(h[i], FloatToHalfRef(f[i]));
}

}  // namespace
}  // namespace vqkv::cpu
