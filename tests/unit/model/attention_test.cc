// CausalAttention against a scalar double-precision reference, across
// chunks and query tiles.
#include "model/attention.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/kv_cache.h"

namespace vqkv::model {
namespace {

constexpr int kHeadDim = 64;

// Scalar causal GQA attention over exact K/V, the reference.
std::vector<float> ReferenceAttention(const std::vector<float>& q, int64_t n,
                                      int64_t pos0, int heads, int kv_heads,
                                      const float* k, const float* v) {
  const int group = heads / kv_heads;
  std::vector<float> out(q.size(), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = pos0 + i;
    for (int h = 0; h < heads; ++h) {
      const float* qi = q.data() + (i * heads + h) * kHeadDim;
      const int g = h / group;
      std::vector<double> w(static_cast<size_t>(t + 1));
      double mx = -1e30;
      for (int64_t s = 0; s <= t; ++s) {
        double dot = 0;
        for (int d = 0; d < kHeadDim; ++d) {
          dot += double{qi[d]} * k[(s * kv_heads + g) * kHeadDim + d];
        }
        w[s] = dot / std::sqrt(double{kHeadDim});
        mx = std::max(mx, w[s]);
      }
      double sum = 0;
      for (double& x : w) sum += (x = std::exp(x - mx));
      float* o = out.data() + (i * heads + h) * kHeadDim;
      for (int64_t s = 0; s <= t; ++s) {
        for (int d = 0; d < kHeadDim; ++d) {
          o[d] += static_cast<float>(w[s] / sum *
                                     v[(s * kv_heads + g) * kHeadDim + d]);
        }
      }
    }
  }
  return out;
}

TEST(AttentionTest, MatchesScalarReferenceAcrossChunksAndTiles) {
  const KvLayout layout{1, 2, kHeadDim};
  const AttentionShape shape{6, 2, kHeadDim};
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  ExactKvCache cache(layout, /*round_to_fp16=*/false);
  std::vector<float> all_k, all_v;
  AttentionScratch scratch;
  // Chunks of 5, then 70 (more than one query tile), then 1.
  for (int64_t n : {5, 70, 1}) {
    const int64_t pos0 = cache.tokens();
    std::vector<float> q(static_cast<size_t>(n * 6 * kHeadDim));
    std::vector<float> k(static_cast<size_t>(n * 2 * kHeadDim)), v(k.size());
    for (float& x : q) x = nd(rng);
    for (float& x : k) x = nd(rng);
    for (float& x : v) x = nd(rng);
    all_k.insert(all_k.end(), k.begin(), k.end());
    all_v.insert(all_v.end(), v.begin(), v.end());
    ASSERT_TRUE(cache.BeginChunk(n).ok());
    ASSERT_TRUE(cache.Append(0, k.data(), k.data(), v.data()).ok());
    std::vector<float> out(q.size());
    ASSERT_TRUE(CausalAttention(q.data(), n, pos0, shape, cache.View(0),
                                out.data(), &scratch)
                    .ok());
    const std::vector<float> ref =
        ReferenceAttention(q, n, pos0, 6, 2, all_k.data(), all_v.data());
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_NEAR(out[i], ref[i], 1e-4) << "chunk " << n << " element " << i;
    }
    ASSERT_TRUE(cache.EndChunk().ok());
  }
}

}  // namespace
}  // namespace vqkv::model
