// Forward pass of the real SmolLM2-135M over a few dozen tokens: sanity of
// the predictions, chunking invariance, the compressed cache against the
// exact one, and the KV hook. Skips when the model file is absent.
#include "model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "eval/compressed_kv_cache.h"
#include "eval/evaluate.h"
#include "eval/kv_collector.h"
#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "tests/unit/eval/offset_codec.h"
#include "tests/unit/model/model_fixture.h"

namespace vqkv::eval {
namespace {

constexpr char kText[] =
    "It was a bright cold day in April, and the clocks were striking "
    "thirteen. The old man walked slowly down the road towards the village, "
    "where his daughter had lived for many years with her husband and their "
    "three children.";

class LlamaModelTest : public model::testing::RealModelTest {
 protected:
  std::vector<int32_t> Tokens() const { return tokenizer_->Encode(kText); }

  // Logits [n][vocab] of every position of `tokens` run in `cache`.
  std::vector<float> AllLogits(const std::vector<int32_t>& tokens,
                               model::KvCache* cache, int64_t max_chunk = 512) {
    model::ForwardOptions fo;
    fo.max_chunk_tokens = max_chunk;
    std::vector<float> hidden;
    absl::Status s = model_->Forward(tokens, cache, fo, &hidden);
    EXPECT_TRUE(s.ok()) << s;
    std::vector<float> logits(tokens.size() * model_->config().vocab);
    if (s.ok()) {
      model_->Logits(hidden.data(), static_cast<int64_t>(tokens.size()),
                     logits.data());
    }
    return logits;
  }

  // max |a - b| over positions [first, last).
  float MaxDiff(const std::vector<float>& a, const std::vector<float>& b,
                int64_t first, int64_t last) const {
    const int64_t v = model_->config().vocab;
    float m = 0;
    for (int64_t i = first * v; i < last * v; ++i) {
      m = std::max(m, std::fabs(a[i] - b[i]));
    }
    return m;
  }
  int32_t Argmax(const std::vector<float>& logits, int64_t pos) const {
    const int64_t v = model_->config().vocab;
    return static_cast<int32_t>(
        std::max_element(logits.begin() + pos * v,
                         logits.begin() + (pos + 1) * v) -
        (logits.begin() + pos * v));
  }
};

TEST_F(LlamaModelTest, ConfigMatchesSmolLm2) {
  const model::LlamaConfig& c = model_->config();
  EXPECT_EQ(c.layers, 30);
  EXPECT_EQ(c.heads, 9);
  EXPECT_EQ(c.kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab, 49152);
  EXPECT_TRUE(c.tied_output);
}

TEST_F(LlamaModelTest, PredictsFactsAndLowPerplexity) {
  auto cache = model_->NewExactCache();
  absl::StatusOr<std::vector<int32_t>> next =
      GenerateGreedy(*model_, tokenizer_->Encode("The capital of France is"), 1,
                     -1, cache.get());
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(tokenizer_->Decode(*next), " Paris");

  const std::vector<int32_t> tokens = Tokens();
  WindowOptions wo;
  wo.ctx = static_cast<int64_t>(tokens.size()) - 1;
  absl::StatusOr<PerplexityResult> ppl =
      Perplexity(*model_, tokens, wo, ExactCacheFactory(*model_));
  ASSERT_TRUE(ppl.ok()) << ppl.status();
  EXPECT_EQ(ppl->tokens_scored, wo.ctx);
  // Uniform guessing would give 49152; a working model on plain English
  // stays far below 100.
  EXPECT_LT(ppl->ppl(), 60.0);
  EXPECT_GT(ppl->ppl(), 1.5);
}

TEST_F(LlamaModelTest, ChunkingDoesNotChangeLogits) {
  const std::vector<int32_t> tokens = Tokens();
  const int64_t n = static_cast<int64_t>(tokens.size());
  auto a = model_->NewExactCache(false);
  auto b = model_->NewExactCache(false);
  const std::vector<float> one = AllLogits(tokens, a.get(), 512);
  const std::vector<float> chunked = AllLogits(tokens, b.get(), 7);
  EXPECT_LT(MaxDiff(one, chunked, 0, n), 2e-3f);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(Argmax(one, i), Argmax(chunked, i));
}

TEST_F(LlamaModelTest, Fp16CodecCacheMatchesExactFp16Cache) {
  const std::vector<int32_t> tokens = Tokens();
  const int64_t n = static_cast<int64_t>(tokens.size());
  absl::StatusOr<std::unique_ptr<Fp16Codec>> codec =
      Fp16Codec::Create(model_->config().kv_layout());
  ASSERT_TRUE(codec.ok()) << codec.status();
  CompressedKvCacheOptions opt;
  opt.sinks = 4;
  opt.window = 8;
  opt.block_tokens = 4;
  absl::StatusOr<std::unique_ptr<CompressedKvCache>> cc =
      CompressedKvCache::Create(model_->config().kv_layout(), codec->get(),
                                nullptr, opt);
  ASSERT_TRUE(cc.ok()) << cc.status();
  auto exact = model_->NewExactCache();
  const int64_t chunk = (*cc)->MaxChunkTokens();
  const std::vector<float> ref = AllLogits(tokens, exact.get(), chunk);
  const std::vector<float> got = AllLogits(tokens, cc->get(), chunk);
  EXPECT_GT((*cc)->coded_tokens(), n / 2);  // most positions went through it
  // fp16 decoding of fp16 values is lossless: identical logits.
  EXPECT_EQ(MaxDiff(ref, got, 0, n), 0.0f);
}

TEST_F(LlamaModelTest, PerturbedCodecChangesOnlyPositionsPastTheWindow) {
  const std::vector<int32_t> tokens = Tokens();
  const int64_t n = static_cast<int64_t>(tokens.size());
  testing::OffsetCodec codec(model_->config().kv_layout(), 0.0f, 0.5f);
  CompressedKvCacheOptions opt;
  opt.sinks = 4;
  opt.window = 16;
  opt.block_tokens = 8;
  absl::StatusOr<std::unique_ptr<CompressedKvCache>> cc =
      CompressedKvCache::Create(model_->config().kv_layout(), &codec, nullptr,
                                opt);
  ASSERT_TRUE(cc.ok()) << cc.status();
  auto exact = model_->NewExactCache();
  const int64_t chunk = (*cc)->MaxChunkTokens();
  const std::vector<float> ref = AllLogits(tokens, exact.get(), chunk);
  const std::vector<float> got = AllLogits(tokens, cc->get(), chunk);
  // Queries t <= sinks + window read nothing decoded; the first one past
  // that reads position sinks decoded.
  const int64_t first_coded_query = opt.sinks + opt.window + 1;
  ASSERT_LT(first_coded_query, n);
  EXPECT_EQ(MaxDiff(ref, got, 0, first_coded_query), 0.0f);
  for (int64_t t = first_coded_query; t < n; ++t) {
    EXPECT_GT(MaxDiff(ref, got, t, t + 1), 0.05f) << "position " << t;
  }
}

TEST_F(LlamaModelTest, PreRopeCodingMatchesExactWithLosslessCodec) {
  const std::vector<int32_t> tokens = Tokens();
  const int64_t n = static_cast<int64_t>(tokens.size());
  testing::OffsetCodec codec(model_->config().kv_layout(), 0.0f, 0.0f);
  CompressedKvCacheOptions opt;
  opt.sinks = 2;
  opt.window = 6;
  opt.block_tokens = 5;
  opt.keys_pre_rope = true;
  opt.round_to_fp16 = false;
  absl::StatusOr<std::unique_ptr<CompressedKvCache>> cc =
      CompressedKvCache::Create(model_->config().kv_layout(), &codec,
                                &model_->rope(), opt);
  ASSERT_TRUE(cc.ok()) << cc.status();
  auto exact = model_->NewExactCache(false);
  const int64_t chunk = (*cc)->MaxChunkTokens();
  const std::vector<float> ref = AllLogits(tokens, exact.get(), chunk);
  const std::vector<float> got = AllLogits(tokens, cc->get(), chunk);
  EXPECT_GT((*cc)->coded_tokens(), 0);
  // RoPE applied after decoding equals RoPE applied before coding.
  EXPECT_EQ(MaxDiff(ref, got, 0, n), 0.0f);
}

TEST_F(LlamaModelTest, CollectorGathersEveryLayerAndHead) {
  std::vector<int32_t> tokens = Tokens();
  tokens.insert(tokens.end(), tokens.begin(), tokens.end());
  ASSERT_GE(tokens.size(), 66u);
  const KvLayout layout = model_->config().kv_layout();
  const int64_t row = int64_t{layout.kv_heads} * layout.head_dim;
  KvCollectorOptions post_opt;
  post_opt.max_tokens = 50;
  post_opt.skip_positions_below = 4;
  KvCollector post(layout, post_opt);
  KvCollectorOptions pre_opt = post_opt;
  pre_opt.keys_pre_rope = true;
  KvCollector pre(layout, pre_opt);

  // Windows of 20 tokens: 16 collected per window after skipping 4.
  absl::StatusOr<int64_t> run = CollectKv(*model_, tokens, 20, &post);
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_TRUE(CollectKv(*model_, tokens, 20, &pre).ok());
  EXPECT_EQ(post.tokens(), 50);
  EXPECT_TRUE(post.full());
  EXPECT_EQ(*run, 20 + 20 + 20 + 6);  // stops once 50 are collected

  std::vector<float> kpost, vpost, kpre, vpre;
  post.Take(&kpost, &vpost);
  pre.Take(&kpre, &vpre);
  ASSERT_EQ(kpost.size(), static_cast<size_t>(layout.layers * 50 * row));
  EXPECT_EQ(vpost, vpre);
  EXPECT_NE(kpost, kpre);
  // Collected token j of window w sits at position 4 + j % 16; rotating the
  // raw keys gives the post-RoPE ones.
  for (int l : {0, 17, 29}) {
    for (int64_t j = 0; j < 50; ++j) {
      std::vector<float> k(kpre.begin() + (l * 50 + j) * row,
                           kpre.begin() + (l * 50 + j + 1) * row);
      model_->rope().Apply(k.data(), layout.kv_heads, 4 + j % 16);
      for (int64_t i = 0; i < row; ++i) {
        ASSERT_NEAR(k[i], kpost[(l * 50 + j) * row + i], 1e-4)
            << "layer " << l << " token " << j;
      }
    }
  }
}

// A collector of some layers holds only those, identical to the same layers
// of a full collection, and reports progress after the last of them.
TEST_F(LlamaModelTest, CollectorOfSomeLayers) {
  const std::vector<int32_t> tokens = Tokens();
  const KvLayout layout = model_->config().kv_layout();
  const size_t row = static_cast<size_t>(layout.kv_heads) * layout.head_dim;
  KvCollectorOptions all_opt;
  all_opt.max_tokens = 30;
  KvCollector all(layout, all_opt);
  KvCollectorOptions some_opt = all_opt;
  some_opt.layers = {3, 17};
  std::vector<int64_t> progress;
  some_opt.progress = [&](int64_t t) { progress.push_back(t); };
  KvCollector some(layout, some_opt);
  ASSERT_TRUE(CollectKv(*model_, tokens, 20, &all).ok());
  ASSERT_TRUE(CollectKv(*model_, tokens, 20, &some).ok());
  EXPECT_EQ(some.tokens(), 30);
  EXPECT_EQ(progress, (std::vector<int64_t>{20, 30}));  // one per window
  EXPECT_TRUE(some.layer_keys(0).empty());
  for (int l : {3, 17}) {
    EXPECT_EQ(some.layer_keys(l), all.layer_keys(l)) << l;
    EXPECT_EQ(some.layer_values(l), all.layer_values(l)) << l;
  }
  std::vector<float> k, v;
  some.Take(&k, &v);
  EXPECT_EQ(k.size(), 2 * 30 * row);
}

TEST_F(LlamaModelTest, CompareOfIdenticalCachesAgreesFully) {
  const std::vector<int32_t> tokens = Tokens();
  WindowOptions wo;
  wo.ctx = 20;
  wo.score_from = 5;
  absl::StatusOr<CompareResult> r =
      Compare(*model_, tokens, wo, ExactCacheFactory(*model_),
              ExactCacheFactory(*model_));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens_scored, WindowCount(tokens.size(), wo) * 15);
  EXPECT_EQ(r->top1_agreement, 1.0);
  EXPECT_LT(r->mean_kl, 1e-9);
  EXPECT_EQ(r->reference.nll_sum, r->test.nll_sum);
  // The per-window sums add up to the totals, one entry per window.
  ASSERT_EQ(static_cast<int64_t>(r->per_window.size()),
            WindowCount(tokens.size(), wo));
  int64_t scored = 0, agree = 0;
  double nll = 0;
  for (const WindowCompare& w : r->per_window) {
    EXPECT_EQ(w.tokens_scored, 15);
    EXPECT_EQ(w.reference_nll_sum, w.test_nll_sum);
    scored += w.tokens_scored;
    agree += w.top1_agree;
    nll += w.reference_nll_sum;
  }
  EXPECT_EQ(scored, r->tokens_scored);
  EXPECT_EQ(agree, r->tokens_scored);
  EXPECT_NEAR(nll, r->reference.nll_sum, 1e-9 * std::abs(nll));
}

TEST_F(LlamaModelTest, BadInputIsAnError) {
  auto cache = model_->NewExactCache();
  std::vector<float> hidden;
  EXPECT_EQ(model_->Forward({}, cache.get(), {}, &hidden).code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> bad = {1, 49152};
  EXPECT_EQ(model_->Forward(bad, cache.get(), {}, &hidden).code(),
            absl::StatusCode::kInvalidArgument);
  model::ExactKvCache wrong(KvLayout{2, 3, 64});
  const std::vector<int32_t> ok = {1, 2};
  EXPECT_EQ(model_->Forward(ok, &wrong, {}, &hidden).code(),
            absl::StatusCode::kInvalidArgument);
  WindowOptions wo;
  wo.ctx = 4096;
  EXPECT_EQ(
      Perplexity(*model_, ok, wo, ExactCacheFactory(*model_)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(model::LlamaModel::Load("/nonexistent/model.gguf").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace vqkv::eval
