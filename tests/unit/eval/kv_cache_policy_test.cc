// The exact/decoded policy of CompressedKvCache as attention sees it.
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "eval/compressed_kv_cache.h"
#include "gtest/gtest.h"
#include "kernels/rope.h"
#include "kernels/vq_codec.h"
#include "model/attention.h"
#include "model/kv_cache.h"
#include "tests/unit/eval/offset_codec.h"

namespace vqkv::eval {
namespace {

using testing::OffsetCodec;

constexpr int kHeadDim = 64;

struct PolicyCase {
  int64_t sinks, window, block, chunk;  // chunk 0 = MaxChunkTokens()
};

// Key of position s is the unit vector e_s; exact values are 0 and the
// codec adds 1 to decoded values. A query 200 * e_s puts (almost) all its
// weight on position s, so its output is ~1 exactly when s was read
// decoded.
class PolicyTest : public ::testing::TestWithParam<PolicyCase> {};

TEST_P(PolicyTest, QueryAtTReadsDecodedExactlyBelowTMinusWindow) {
  const PolicyCase pc = GetParam();
  const KvLayout layout{2, 1, kHeadDim};
  const model::AttentionShape shape{3, 1, kHeadDim};
  const int64_t total = 48;
  OffsetCodec codec(layout, 0.0f, 1.0f);
  CompressedKvCacheOptions opt;
  opt.sinks = pc.sinks;
  opt.window = pc.window;
  opt.block_tokens = pc.block;
  absl::StatusOr<std::unique_ptr<CompressedKvCache>> cache =
      CompressedKvCache::Create(layout, &codec, nullptr, opt);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const int64_t chunk = pc.chunk > 0 ? pc.chunk : (*cache)->MaxChunkTokens();
  model::AttentionScratch scratch;
  int checked_decoded = 0, checked_exact = 0;
  for (int64_t pos0 = 0; pos0 < total; pos0 += chunk) {
    const int64_t n = std::min(chunk, total - pos0);
    std::vector<float> k(static_cast<size_t>(n * kHeadDim), 0.0f);
    std::vector<float> v(k.size(), 0.0f);
    for (int64_t i = 0; i < n; ++i) k[i * kHeadDim + pos0 + i] = 1.0f;
    ASSERT_TRUE((*cache)->BeginChunk(n).ok());
    for (int l = 0; l < layout.layers; ++l) {
      ASSERT_TRUE((*cache)->Append(l, k.data(), k.data(), v.data()).ok());
      const model::KvCache::LayerView view = (*cache)->View(l);
      for (int64_t s = 0; s < pos0 + n; ++s) {
        std::vector<float> q(static_cast<size_t>(n * 3 * kHeadDim), 0.0f);
        for (int64_t i = 0; i < n * 3; ++i) q[i * kHeadDim + s] = 200.0f;
        std::vector<float> out(q.size());
        ASSERT_TRUE(model::CausalAttention(q.data(), n, pos0, shape, view,
                                           out.data(), &scratch)
                        .ok());
        for (int64_t i = 0; i < n; ++i) {
          const int64_t t = pos0 + i;
          if (s > t) continue;
          const bool decoded = s >= pc.sinks && s < t - pc.window;
          for (int h = 0; h < 3; ++h) {
            ASSERT_NEAR(out[(i * 3 + h) * kHeadDim + 5], decoded ? 1.0f : 0.0f,
                        1e-3)
                << "layer " << l << " query t=" << t << " key s=" << s;
          }
          (decoded ? checked_decoded : checked_exact)++;
        }
      }
    }
    ASSERT_TRUE((*cache)->EndChunk().ok());
  }
  EXPECT_GT(checked_exact, 0);
  if (total - 1 - pc.window > pc.sinks) {
    EXPECT_GT(checked_decoded, 0);
  }
  // Blocks are coded only when first needed: the last query (t = total-1)
  // needs [sinks, total-1-window), rounded up to whole blocks.
  const int64_t need = std::max<int64_t>(0, total - 1 - pc.window - pc.sinks);
  EXPECT_EQ((*cache)->coded_tokens(),
            (need + pc.block - 1) / pc.block * pc.block);
}

INSTANTIATE_TEST_SUITE_P(
    Policies, PolicyTest,
    ::testing::Values(PolicyCase{4, 8, 4, 0}, PolicyCase{4, 8, 4, 1},
                      PolicyCase{4, 8, 4, 3}, PolicyCase{0, 0, 1, 0},
                      PolicyCase{2, 5, 6, 0}, PolicyCase{4, 16, 8, 0},
                      PolicyCase{3, 6, 2, 5}, PolicyCase{60, 4, 4, 0}));

TEST(CompressedKvCacheTest, PreRopeKeysAreRotatedAfterDecoding) {
  const KvLayout layout{1, 2, kHeadDim};
  const Rope rope(kHeadDim, RopeSpec{10000.0, kHeadDim});
  OffsetCodec codec(layout, 0.0f, 0.0f);
  CompressedKvCacheOptions opt;
  opt.sinks = 2;
  opt.window = 4;
  opt.block_tokens = 3;
  opt.keys_pre_rope = true;
  opt.round_to_fp16 = false;
  absl::StatusOr<std::unique_ptr<CompressedKvCache>> cache =
      CompressedKvCache::Create(layout, &codec, &rope, opt);
  ASSERT_TRUE(cache.ok()) << cache.status();
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t t = 0; t < 20; ++t) {
    std::vector<float> raw(2 * kHeadDim), v(2 * kHeadDim);
    for (float& x : raw) x = nd(rng);
    for (float& x : v) x = nd(rng);
    std::vector<float> post = raw;
    rope.Apply(post.data(), 2, t);
    ASSERT_TRUE((*cache)->BeginChunk(1).ok());
    ASSERT_TRUE((*cache)->Append(0, raw.data(), post.data(), v.data()).ok());
    ASSERT_TRUE((*cache)->EndChunk().ok());
  }
  const model::KvCache::LayerView view = (*cache)->View(0);
  ASSERT_NE(view.decoded_keys, nullptr);
  ASSERT_GT(view.decoded_end, opt.sinks);
  for (int64_t s = opt.sinks; s < view.decoded_end; ++s) {
    for (int i = 0; i < 2 * kHeadDim; ++i) {
      ASSERT_EQ(view.decoded_keys[s * 2 * kHeadDim + i],
                view.keys[s * 2 * kHeadDim + i])
          << "position " << s;
    }
  }
}

TEST(CompressedKvCacheTest, CodedPartsLeaveTheRestExact) {
  const KvLayout layout{3, 1, kHeadDim};
  OffsetCodec codec(layout, 1.0f, 2.0f);
  CompressedKvCacheOptions opt;
  opt.sinks = 1;
  opt.window = 2;
  opt.block_tokens = 2;
  absl::StatusOr<CodedParts> parts = ParseCodedParts("values", "1-1");
  ASSERT_TRUE(parts.ok()) << parts.status();
  opt.coded = *parts;
  absl::StatusOr<std::unique_ptr<CompressedKvCache>> cache =
      CompressedKvCache::Create(layout, &codec, nullptr, opt);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const std::vector<float> zero(kHeadDim, 0.0f);
  for (int64_t t = 0; t < 12; ++t) {
    ASSERT_TRUE((*cache)->BeginChunk(1).ok());
    for (int l = 0; l < layout.layers; ++l) {
      ASSERT_TRUE(
          (*cache)->Append(l, zero.data(), zero.data(), zero.data()).ok());
    }
    ASSERT_TRUE((*cache)->EndChunk().ok());
  }
  for (int l = 0; l < layout.layers; ++l) {
    const model::KvCache::LayerView view = (*cache)->View(l);
    ASSERT_GT(view.decoded_end, opt.sinks);
    for (int64_t s = opt.sinks; s < view.decoded_end; ++s) {
      EXPECT_EQ(view.decoded_keys[s * kHeadDim], 0.0f) << "layer " << l;
      EXPECT_EQ(view.decoded_values[s * kHeadDim], l == 1 ? 2.0f : 0.0f)
          << "layer " << l << " position " << s;
    }
  }
}

TEST(CompressedKvCacheTest, CodedPartsParseAndDescribe) {
  absl::StatusOr<CodedParts> all = ParseCodedParts("all", "");
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->everything(30));
  EXPECT_EQ(DescribeCodedParts(*all), "all");
  absl::StatusOr<CodedParts> keys = ParseCodedParts("keys", "10-19");
  ASSERT_TRUE(keys.ok());
  EXPECT_TRUE(keys->keys_in(10));
  EXPECT_TRUE(keys->keys_in(19));
  EXPECT_FALSE(keys->keys_in(20));
  EXPECT_FALSE(keys->keys_in(9));
  EXPECT_FALSE(keys->values_in(15));
  EXPECT_FALSE(keys->everything(30));
  EXPECT_EQ(DescribeCodedParts(*keys), "keys, layers 10-19");
  EXPECT_EQ(DescribeCodedParts(*ParseCodedParts("values", "")), "values");
  for (const auto& [parts, layers] :
       std::vector<std::pair<std::string, std::string>>{{"both", ""},
                                                        {"all", "5"},
                                                        {"all", "9-3"},
                                                        {"all", "-1-3"},
                                                        {"all", "a-b"}}) {
    EXPECT_EQ(ParseCodedParts(parts, layers).status().code(),
              absl::StatusCode::kInvalidArgument)
        << parts << " " << layers;
  }
}

TEST(CompressedKvCacheTest, RejectsBadConfigurations) {
  const KvLayout layout{2, 1, kHeadDim};
  OffsetCodec codec(layout, 0.0f, 0.0f);
  CompressedKvCacheOptions opt;
  opt.window = 8;
  opt.block_tokens = 10;  // > window + 1
  EXPECT_EQ(
      CompressedKvCache::Create(layout, &codec, nullptr, opt).status().code(),
      absl::StatusCode::kInvalidArgument);
  opt.block_tokens = 4;
  EXPECT_EQ(
      CompressedKvCache::Create(KvLayout{3, 1, kHeadDim}, &codec, nullptr, opt)
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  opt.keys_pre_rope = true;
  EXPECT_EQ(
      CompressedKvCache::Create(layout, &codec, nullptr, opt).status().code(),
      absl::StatusCode::kInvalidArgument);
  opt.keys_pre_rope = false;
  absl::StatusOr<std::unique_ptr<CompressedKvCache>> cache =
      CompressedKvCache::Create(layout, &codec, nullptr, opt);
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ((*cache)->MaxChunkTokens(), 6);
  EXPECT_EQ((*cache)->BeginChunk(7).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*cache)->BeginChunk(6).ok());
  std::vector<float> x(6 * kHeadDim);
  EXPECT_EQ((*cache)->Append(1, x.data(), x.data(), x.data()).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*cache)->EndChunk().code(), absl::StatusCode::kFailedPrecondition);
}

// A small fitted VQ codec (keys 2 + 2 stages x 6 bits with the RoPE split,
// values 2 x 5 bits) on random data; refine_layer >= 0 gets a key
// refinement of 3 stages.
std::unique_ptr<VqCodec> SmallVqCodec(const KvLayout& layout, int sketch_bits,
                                      int refine_layer = -1) {
  VqConfig cfg;
  cfg.key_stages = 4;
  cfg.key_bits = 6;
  cfg.value_stages = 2;
  cfg.value_bits = 5;
  cfg.key_split = KeySplit::kRopeAdjacentPairs;
  cfg.key_sketch_bits = sketch_bits;
  absl::StatusOr<std::unique_ptr<VqCodec>> codec = VqCodec::Create(layout, cfg);
  EXPECT_TRUE(codec.ok()) << codec.status();
  const int64_t n = 128;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> k(static_cast<size_t>(n * layout.ElementsPerToken()));
  std::vector<float> v(k.size());
  for (float& x : k) x = nd(rng);
  for (float& x : v) x = nd(rng);
  EXPECT_TRUE((*codec)->Fit(k.data(), v.data(), n, FitOptions{}).ok());
  if (refine_layer >= 0) {
    const int64_t layer_floats = n * layout.kv_heads * layout.head_dim;
    EXPECT_TRUE((*codec)
                    ->FitKeyRefinement(refine_layer,
                                       k.data() + refine_layer * layer_floats,
                                       n, 3, FitOptions{})
                    .ok());
  }
  return *std::move(codec);
}

// attend_codes: attention reads the coded positions from the VQ codes
// (no decoded copy) and matches attention over the decoded copies, query by
// query, through prefill chunks and single-token steps; with a key sketch,
// and with a key refinement of either layer.
TEST(CompressedKvCacheTest, AttentionOverCodesMatchesDecodedCopies) {
  const KvLayout layout{2, 2, kHeadDim};
  const model::AttentionShape shape{6, 2, kHeadDim};
  for (auto [sketch_bits, refine_layer] : {std::pair{0, -1}, std::pair{64, -1},
                                           std::pair{0, 1}, std::pair{64, 0}}) {
    SCOPED_TRACE(refine_layer);
    std::unique_ptr<VqCodec> codec =
        SmallVqCodec(layout, sketch_bits, refine_layer);
    CompressedKvCacheOptions opt;
    opt.sinks = 4;
    opt.window = 16;
    opt.block_tokens = 8;
    absl::StatusOr<std::unique_ptr<CompressedKvCache>> decoded =
        CompressedKvCache::Create(layout, codec.get(), nullptr, opt);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    opt.attend_codes = true;
    absl::StatusOr<std::unique_ptr<CompressedKvCache>> coded =
        CompressedKvCache::Create(layout, codec.get(), nullptr, opt);
    ASSERT_TRUE(coded.ok()) << coded.status();
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    model::AttentionScratch s1, s2;
    int64_t pos0 = 0, checked = 0;
    double worst = 0, vmax = 0;
    // Prefill in chunks of up to MaxChunkTokens, then one token per step.
    for (int64_t n : {10, 10, 10, 10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}) {
      const size_t m = static_cast<size_t>(n) * 2 * kHeadDim;
      ASSERT_TRUE((*decoded)->BeginChunk(n).ok());
      ASSERT_TRUE((*coded)->BeginChunk(n).ok());
      for (int l = 0; l < layout.layers; ++l) {
        std::vector<float> k(m), v(m), q(static_cast<size_t>(n) * 6 * kHeadDim);
        for (float& x : k) x = nd(rng);
        for (float& x : v) x = nd(rng);
        for (float& x : q) x = 2.0f * nd(rng);
        for (float x : v) vmax = std::max(vmax, double(std::abs(x)));
        ASSERT_TRUE((*decoded)->Append(l, k.data(), k.data(), v.data()).ok());
        ASSERT_TRUE((*coded)->Append(l, k.data(), k.data(), v.data()).ok());
        const model::KvCache::LayerView vd = (*decoded)->View(l);
        const model::KvCache::LayerView vc = (*coded)->View(l);
        EXPECT_EQ(vc.decoded_keys, nullptr);
        EXPECT_EQ(vc.decoded_end, vd.decoded_end);
        std::vector<float> o1(q.size()), o2(q.size());
        ASSERT_TRUE(
            model::CausalAttention(q.data(), n, pos0, shape, vd, o1.data(), &s1)
                .ok());
        ASSERT_TRUE(
            model::CausalAttention(q.data(), n, pos0, shape, vc, o2.data(), &s2)
                .ok());
        for (size_t i = 0; i < o1.size(); ++i) {
          worst = std::max(worst, double(std::abs(o1[i] - o2[i])));
        }
        if (vc.coded.heads != nullptr) ++checked;
      }
      ASSERT_TRUE((*decoded)->EndChunk().ok());
      ASSERT_TRUE((*coded)->EndChunk().ok());
      pos0 += n;
    }
    EXPECT_GT(checked, 10);  // most steps read codes
    EXPECT_EQ((*coded)->coded_tokens(), (*decoded)->coded_tokens());
    EXPECT_EQ((*coded)->encoded_bytes(), (*decoded)->encoded_bytes());
    // Same tolerance as tests/unit/kernels/code_attention_test.cc.
    std::printf("sketch %d: max |diff| %.3g, max |v| %.3g\n", sketch_bits,
                worst, vmax);
    EXPECT_LE(worst, 2e-5 * vmax) << "sketch bits " << sketch_bits;
  }
}

TEST(CompressedKvCacheTest, AttendCodesNeedsAPostRopeVqCodec) {
  const KvLayout layout{2, 1, kHeadDim};
  CompressedKvCacheOptions opt;
  opt.window = 8;
  opt.block_tokens = 4;
  opt.attend_codes = true;
  OffsetCodec offset(layout, 0.0f, 0.0f);
  EXPECT_EQ(
      CompressedKvCache::Create(layout, &offset, nullptr, opt).status().code(),
      absl::StatusCode::kInvalidArgument);
  std::unique_ptr<VqCodec> vq = SmallVqCodec(layout, 0);
  EXPECT_TRUE(CompressedKvCache::Create(layout, vq.get(), nullptr, opt).ok());
  const Rope rope(kHeadDim, RopeSpec{10000.0, kHeadDim});
  opt.keys_pre_rope = true;
  EXPECT_EQ(
      CompressedKvCache::Create(layout, vq.get(), &rope, opt).status().code(),
      absl::StatusCode::kInvalidArgument);
  opt.keys_pre_rope = false;
  opt.coded.values = false;  // attend_codes needs everything coded
  EXPECT_EQ(
      CompressedKvCache::Create(layout, vq.get(), nullptr, opt).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv::eval
