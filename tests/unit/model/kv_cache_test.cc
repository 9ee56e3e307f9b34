// ExactKvCache::AppendTokens / ReadTokens: KV computed elsewhere goes into
// the cache without a forward pass (what `vqkv generate` does with a cache
// hit), and comes back out in the codec layout. The real-model tests skip
// when the model has not been fetched.
#include "model/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/llama_model.h"
#include "tests/unit/model/model_fixture.h"

namespace vqkv::model {
namespace {

constexpr KvLayout kLayout{3, 2, 8};
constexpr int64_t kRow = 2 * 8;

std::vector<float> Random(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<float> Rounded(std::vector<float> v) {
  RoundToFp16(v.data(), static_cast<int64_t>(v.size()));
  return v;
}

TEST(ExactKvCacheTest, AppendTokensThenViewGivesTheValues) {
  const int64_t n = 5;
  const std::vector<float> k = Random(kLayout.layers * n * kRow, 1);
  const std::vector<float> v = Random(kLayout.layers * n * kRow, 2);
  for (bool round : {false, true}) {
    ExactKvCache cache(kLayout, round);
    ASSERT_TRUE(cache.AppendTokens(n, k.data(), v.data()).ok());
    EXPECT_EQ(cache.tokens(), n);
    const std::vector<float> want_k = round ? Rounded(k) : k;
    const std::vector<float> want_v = round ? Rounded(v) : v;
    for (int l = 0; l < kLayout.layers; ++l) {
      const KvCache::LayerView view = cache.View(l);
      ASSERT_EQ(view.tokens, n);
      EXPECT_EQ(view.decoded_keys, nullptr);
      for (int64_t i = 0; i < n * kRow; ++i) {
        ASSERT_EQ(view.keys[i], want_k[l * n * kRow + i]) << l << " " << i;
        ASSERT_EQ(view.values[i], want_v[l * n * kRow + i]) << l << " " << i;
      }
    }
    // Read back, whole and in part.
    std::vector<float> rk(k.size()), rv(v.size());
    ASSERT_TRUE(cache.ReadTokens(0, n, rk.data(), rv.data()).ok());
    EXPECT_EQ(rk, want_k);
    EXPECT_EQ(rv, want_v);
    std::vector<float> pk(kLayout.layers * 2 * kRow),
        pv(kLayout.layers * 2 * kRow);
    ASSERT_TRUE(cache.ReadTokens(2, 4, pk.data(), pv.data()).ok());
    for (int l = 0; l < kLayout.layers; ++l) {
      for (int64_t i = 0; i < 2 * kRow; ++i) {
        EXPECT_EQ(pk[l * 2 * kRow + i], want_k[l * n * kRow + 2 * kRow + i]);
        EXPECT_EQ(pv[l * 2 * kRow + i], want_v[l * n * kRow + 2 * kRow + i]);
      }
    }
  }
}

TEST(ExactKvCacheTest, AppendTokensAfterAChunkAndBeforeOne) {
  ExactKvCache cache(kLayout, /*round_to_fp16=*/false);
  const std::vector<float> k1 = Random(kRow, 3), v1 = Random(kRow, 4);
  // One forward-style chunk of 1 token ...
  ASSERT_TRUE(cache.BeginChunk(1).ok());
  for (int l = 0; l < kLayout.layers; ++l) {
    ASSERT_TRUE(cache.Append(l, nullptr, k1.data(), v1.data()).ok());
  }
  // ... AppendTokens is refused while it is open ...
  const std::vector<float> k = Random(kLayout.layers * 2 * kRow, 5);
  const std::vector<float> v = Random(kLayout.layers * 2 * kRow, 6);
  EXPECT_EQ(cache.AppendTokens(2, k.data(), v.data()).code(),
            absl::StatusCode::kFailedPrecondition);
  std::vector<float> rk(k.size()), rv(v.size());
  EXPECT_EQ(cache.ReadTokens(0, 1, rk.data(), rv.data()).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(cache.EndChunk().ok());
  // ... and extends the cache after it.
  ASSERT_TRUE(cache.AppendTokens(2, k.data(), v.data()).ok());
  EXPECT_EQ(cache.tokens(), 3);
  ASSERT_TRUE(cache.ReadTokens(1, 3, rk.data(), rv.data()).ok());
  EXPECT_EQ(rk, k);
  EXPECT_EQ(rv, v);
  // A chunk after AppendTokens lands at position 3.
  ASSERT_TRUE(cache.BeginChunk(1).ok());
  for (int l = 0; l < kLayout.layers; ++l) {
    ASSERT_TRUE(cache.Append(l, nullptr, k1.data(), v1.data()).ok());
    EXPECT_EQ(cache.View(l).tokens, 4);
    EXPECT_EQ(cache.View(l).keys[3 * kRow], k1[0]);
  }
  ASSERT_TRUE(cache.EndChunk().ok());
  EXPECT_EQ(cache.tokens(), 4);
}

TEST(ExactKvCacheTest, BadArguments) {
  ExactKvCache cache(kLayout);
  const std::vector<float> k = Random(kLayout.layers * kRow, 7);
  EXPECT_EQ(cache.AppendTokens(-1, k.data(), k.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.AppendTokens(1, nullptr, k.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(cache.AppendTokens(0, nullptr, nullptr).ok());
  EXPECT_EQ(cache.tokens(), 0);
  ASSERT_TRUE(cache.AppendTokens(1, k.data(), k.data()).ok());
  std::vector<float> out(k.size());
  EXPECT_EQ(cache.ReadTokens(0, 2, out.data(), out.data()).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache.ReadTokens(-1, 1, out.data(), out.data()).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache.ReadTokens(1, 0, out.data(), out.data()).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(cache.ReadTokens(1, 1, nullptr, nullptr).ok());
  cache.Clear();
  EXPECT_EQ(cache.tokens(), 0);
  EXPECT_EQ(cache.ReadTokens(0, 1, out.data(), out.data()).code(),
            absl::StatusCode::kOutOfRange);
}

constexpr char kText[] =
    "It was a bright cold day in April, and the clocks were striking "
    "thirteen. The old man walked slowly down the road towards the village, "
    "where his daughter had lived for many years with her husband and their "
    "three children. Every morning he stopped at the baker's shop on the "
    "corner, bought a loaf of dark bread and two rolls, and carried them "
    "home under his arm while the church bells rang for the early service. "
    "His neighbours knew the sound of his stick on the cobbles, and the "
    "children waved to him from the windows of the school.";

class ExactKvCacheModelTest : public testing::RealModelTest {
 protected:
  // Final hidden states [rows][embd] of `tokens` run in `cache`, in chunks
  // of `chunk`. (Hidden states, not logits: the output sgemm's rounding
  // depends on how many rows it multiplies at once.)
  std::vector<float> Hidden(const std::vector<int32_t>& tokens, KvCache* cache,
                            int64_t chunk) const {
    ForwardOptions fo;
    fo.max_chunk_tokens = chunk;
    std::vector<float> hidden;
    const absl::Status s = model_->Forward(tokens, cache, fo, &hidden);
    EXPECT_TRUE(s.ok()) << s;
    return hidden;
  }
  // The argmax of the logits of each row of `hidden`.
  std::vector<int32_t> Predictions(const std::vector<float>& hidden) const {
    const int64_t embd = model_->config().embd;
    const int64_t vocab = model_->config().vocab;
    std::vector<float> logits(static_cast<size_t>(vocab));
    std::vector<int32_t> out;
    for (size_t r = 0; r * embd < hidden.size(); ++r) {
      model_->Logits(hidden.data() + r * embd, 1, logits.data());
      out.push_back(static_cast<int32_t>(
          std::max_element(logits.begin(), logits.end()) - logits.begin()));
    }
    return out;
  }
};

TEST_F(ExactKvCacheModelTest, ForwardAfterAppendTokensMatchesFullForward) {
  const std::vector<int32_t> tokens = tokenizer_->Encode(kText);
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t p = 64;  // the "cached" prefix: one 64-token block
  ASSERT_GT(n, p + 16);
  const std::vector<int32_t> prefix(tokens.begin(), tokens.begin() + p);
  const std::vector<int32_t> suffix(tokens.begin() + p, tokens.end());
  const KvLayout layout = model_->config().kv_layout();
  const int64_t row = int64_t{layout.kv_heads} * layout.head_dim;
  const int64_t embd = model_->config().embd;

  // The prefix's KV from a forward pass, read out in the codec layout.
  auto producer = model_->NewExactCache();
  Hidden(prefix, producer.get(), p);
  std::vector<float> k(layout.layers * p * row), v(k.size());
  ASSERT_TRUE(producer->ReadTokens(0, p, k.data(), v.data()).ok());

  // A fresh cache given that KV, then only the suffix run through the model.
  auto loaded = model_->NewExactCache();
  ASSERT_TRUE(loaded->AppendTokens(p, k.data(), v.data()).ok());
  const std::vector<float> got = Hidden(suffix, loaded.get(), p);
  EXPECT_EQ(loaded->tokens(), n);
  // The loaded cache holds the given KV unchanged (fp16 rounding of fp16
  // values is the identity).
  std::vector<float> lk(k.size()), lv(v.size());
  ASSERT_TRUE(loaded->ReadTokens(0, p, lk.data(), lv.data()).ok());
  EXPECT_EQ(lk, k);
  EXPECT_EQ(lv, v);

  // The whole sequence in one forward pass on the same chunk grid (chunks
  // of p tokens): bit-identical hidden states for the suffix.
  auto whole = model_->NewExactCache();
  const std::vector<float> same_grid = Hidden(tokens, whole.get(), p);
  ASSERT_EQ(same_grid.size(), static_cast<size_t>(n * embd));
  ASSERT_EQ(got.size(), static_cast<size_t>((n - p) * embd));
  EXPECT_TRUE(std::equal(got.begin(), got.end(), same_grid.begin() + p * embd))
      << "hidden states differ from the whole sequence on the same grid";

  // In one chunk of n rows: the same up to sgemm blocking (OpenBLAS results
  // depend on the number of rows), the same predictions.
  auto one = model_->NewExactCache();
  const std::vector<float> one_chunk = Hidden(tokens, one.get(), 512);
  float max_diff = 0;
  for (int64_t i = 0; i < (n - p) * embd; ++i) {
    max_diff = std::max(max_diff, std::fabs(got[i] - one_chunk[p * embd + i]));
  }
  EXPECT_LT(max_diff, 1e-2f);
  const std::vector<int32_t> want = Predictions(
      std::vector<float>(one_chunk.begin() + p * embd, one_chunk.end()));
  EXPECT_EQ(Predictions(got), want);
}

}  // namespace
}  // namespace vqkv::model
