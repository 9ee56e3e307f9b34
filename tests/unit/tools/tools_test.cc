// Unit tests of the pieces behind `vqkv eval`: the KV memory account and
// the retrieval tasks' prompt builders and answer checkers (passkey,
// multi-key needle, variable tracking).
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/baselines/kivi_codec.h"
#include "kernels/vq_codec.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "tools/common.h"
#include "tools/memory.h"
#include "tools/passkey.h"
#include "tools/retrieval.h"
#include "tools/retrieval_tasks.h"

namespace vqkv::tools {
namespace {

constexpr KvLayout kSmol{30, 3, 64};

TEST(CalibrateStagesTest, DefaultsSplitTheRateAndKeepWhatWasAsked) {
  VqConfig none;
  const VqConfig d64 = WithCalibrateStages(none, 64);
  EXPECT_EQ(d64.key_stages, 20);
  EXPECT_EQ(d64.value_stages, 16);
  const VqConfig d128 = WithCalibrateStages(none, 128);
  EXPECT_EQ(d128.key_stages, 40);
  EXPECT_EQ(d128.value_stages, 32);
  // 10-bit key and 9-bit value codes: 2.6875 bits/element at both sizes.
  for (int d : {64, 128}) {
    const VqConfig c = WithCalibrateStages(none, d);
    EXPECT_DOUBLE_EQ(
        ComputeVqRate(c.key_stages, c.key_bits, c.value_stages, c.value_bits, d)
            .bits_per_element,
        2.6875)
        << d;
  }
  VqConfig asked;
  asked.key_stages = 28;
  asked.value_stages = 8;
  const VqConfig kept = WithCalibrateStages(asked, 64);
  EXPECT_EQ(kept.key_stages, 28);
  EXPECT_EQ(kept.value_stages, 8);
  // Group stages fix the key stages (the codec sums them); values still
  // take the default.
  VqConfig groups;
  groups.key_group_stages[0] = 10;
  groups.key_group_stages[1] = 6;
  const VqConfig g = WithCalibrateStages(groups, 64);
  EXPECT_EQ(g.key_stages, 0);
  EXPECT_EQ(g.value_stages, 16);
  EXPECT_EQ(WithCalibrateStages(none, 2).value_stages, 1);  // never 0
}

TEST(MemoryTest, Fp16IsTwoBytesPerElementForKeysAndValues) {
  auto fp16 = Fp16Codec::Create(kSmol);
  ASSERT_TRUE(fp16.ok());
  EXPECT_EQ(Fp16BytesPerToken(kSmol), 30 * 3 * 64 * 2 * 2);
  // The policy does not apply to the uncompressed reference.
  KvMemoryPolicy p{4, 16, 1000};
  EXPECT_EQ(KvBytes(**fp16, p, 100), 100 * Fp16BytesPerToken(kSmol));
  const int64_t budget = int64_t{1} << 30;
  EXPECT_EQ(MaxTokensInBudget(**fp16, p, budget),
            budget / Fp16BytesPerToken(kSmol));
}

TEST(MemoryTest, CompressedCountsWindowCodebooksAndPayload) {
  auto kivi = KiviCodec::Create(kSmol, {.bits = 2, .group_size = 32});
  ASSERT_TRUE(kivi.ok());
  KvMemoryPolicy p{4, 60, 12345};
  const int64_t fp16 = Fp16BytesPerToken(kSmol);
  // Inside the exact region: codebooks + fp16 only.
  EXPECT_EQ(KvBytes(**kivi, p, 10), 12345 + 10 * fp16);
  EXPECT_EQ(KvBytes(**kivi, p, 64), 12345 + 64 * fp16);
  // Past it: the rest through the codec.
  EXPECT_EQ(
      KvBytes(**kivi, p, 64 + 96),
      12345 + 64 * fp16 + static_cast<int64_t>((*kivi)->EncodedBytes(96)));
}

TEST(MemoryTest, MaxTokensIsTheLastContextThatFits) {
  auto kivi = KiviCodec::Create(kSmol, {.bits = 2, .group_size = 32});
  ASSERT_TRUE(kivi.ok());
  KvMemoryPolicy p{4, 1024, 1 << 20};
  for (int64_t budget :
       {int64_t{1} << 20, int64_t{50} << 20, int64_t{1} << 30}) {
    const int64_t t = MaxTokensInBudget(**kivi, p, budget);
    if (t > 0) {
      EXPECT_LE(KvBytes(**kivi, p, t), budget);
    }
    EXPECT_GT(KvBytes(**kivi, p, t + 1), budget);
  }
  // The codebooks alone exceed a 1 MiB budget: nothing fits.
  EXPECT_EQ(MaxTokensInBudget(**kivi, p, 1 << 20), 0);
  // Compression buys a longer context than fp16 in the same memory.
  auto fp16 = Fp16Codec::Create(kSmol);
  ASSERT_TRUE(fp16.ok());
  EXPECT_GT(MaxTokensInBudget(**kivi, p, int64_t{1} << 30),
            3 * MaxTokensInBudget(**fp16, p, int64_t{1} << 30));
}

TEST(PasskeyTest, ExtractsTheFirstFiveDigitRun) {
  EXPECT_EQ(ExtractPasskey(" 48213. Remember"), "48213");
  EXPECT_EQ(ExtractPasskey("1234 and 56789"), "56789");
  EXPECT_EQ(ExtractPasskey("123456"), "");  // six digits is not the key
  EXPECT_EQ(ExtractPasskey("no digits"), "");
}

TEST(PasskeyTest, PromptHidesTheNeedleAtTheRequestedDepth) {
  auto gguf = model::GgufFile::Open(VQKV_MODEL_PATH);
  if (!gguf.ok()) GTEST_SKIP() << "model not fetched: " << gguf.status();
  auto tok = model::Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (double depth : {0.0, 0.5, 1.0}) {
    auto p = BuildPasskeyPrompt(**tok, 1024, depth, "31415");
    ASSERT_TRUE(p.ok()) << p.status();
    const int64_t n = static_cast<int64_t>(p->ids.size());
    EXPECT_LE(n, 1024);
    EXPECT_GT(n, 900);
    EXPECT_NEAR(static_cast<double>(p->needle_pos) / n, depth, 0.1);
    const std::string needle =
        (*tok)->Decode(absl::MakeConstSpan(p->ids).subspan(
            p->needle_pos, p->needle_end - p->needle_pos));
    EXPECT_NE(needle.find("pass key is 31415"), std::string::npos) << needle;
  }
  EXPECT_FALSE(BuildPasskeyPrompt(**tok, 20, 0.5, "31415").ok());
}

// The tokenizer of the real model, or null (the test skips) when the model
// has not been fetched.
std::unique_ptr<model::Tokenizer> LoadTokenizer() {
  auto gguf = model::GgufFile::Open(VQKV_MODEL_PATH);
  if (!gguf.ok()) return nullptr;
  auto tok = model::Tokenizer::FromGguf(**gguf);
  if (!tok.ok()) return nullptr;
  return *std::move(tok);
}

std::string Piece(const model::Tokenizer& tok, const std::vector<int32_t>& ids,
                  int64_t pos, int64_t end) {
  return tok.Decode(absl::MakeConstSpan(ids).subspan(
      static_cast<size_t>(pos), static_cast<size_t>(end - pos)));
}

TEST(RetrievalTest, SpreadDepthsCoverTheUnitIntervalEvenly) {
  EXPECT_DOUBLE_EQ(SpreadDepth(0, 1), 0.5);
  EXPECT_DOUBLE_EQ(SpreadDepth(0, 4), 0.125);
  EXPECT_DOUBLE_EQ(SpreadDepth(3, 4), 0.875);
  // Three needles around trial 1 of 2 (depth 0.75): 0.75, 0.0833, 0.4167,
  // sorted, with the asked needle (index 0) last.
  const auto d = SpreadNeedles(3, 1, 2);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_NEAR(d[0].first, 0.75 + 1.0 / 3 - 1, 1e-12);
  EXPECT_EQ(d[0].second, 1);
  EXPECT_NEAR(d[1].first, 0.75 + 2.0 / 3 - 1, 1e-12);
  EXPECT_EQ(d[2].second, 0);
  EXPECT_DOUBLE_EQ(d[2].first, 0.75);
}

TEST(RetrievalTest, FirstFiveDigitsAndTheCheckers) {
  EXPECT_EQ(FirstFiveDigits(" 48213."), "48213");
  EXPECT_TRUE(CheckNumberAnswer(" 48213. Remember", "48213"));
  // A distractor's number first is wrong, even if the right one follows.
  EXPECT_FALSE(CheckNumberAnswer(" 11111 or 48213", "48213"));
  EXPECT_FALSE(CheckNumberAnswer(" 482130", "48213"));
  EXPECT_FALSE(CheckNumberAnswer(" QWE.", "48213"));  // a name, not a value
  EXPECT_FALSE(CheckNumberAnswer("", ""));
  EXPECT_TRUE(SpansCoded({10, 50}, {20, 60}, 100, {4, 40}));
  EXPECT_FALSE(SpansCoded({10, 55}, {20, 61}, 100, {4, 40}));  // in window
  EXPECT_FALSE(SpansCoded({2}, {9}, 100, {4, 40}));            // in sinks
}

TEST(RetrievalTest, SpreadPasskeyNeedlesLandInTheCodedRegion) {
  auto tok = LoadTokenizer();
  if (!tok) GTEST_SKIP() << "model not fetched";
  const NeedleRegion region{4, 256};
  for (int64_t length : {1024, 2048}) {
    const int trials = 20;
    int64_t last = -1;
    for (int t = 0; t < trials; ++t) {
      auto p = BuildPasskeyPrompt(*tok, length, SpreadDepth(t, trials), "31415",
                                  region);
      ASSERT_TRUE(p.ok()) << p.status();
      const int64_t n = static_cast<int64_t>(p->ids.size());
      EXPECT_LE(n, length);
      EXPECT_GT(n, length - 40);  // less than two filler units short
      // Every depth of the spread is coded, and deeper trials go later.
      EXPECT_TRUE(SpansCoded({p->needle_pos}, {p->needle_end}, n, region))
          << "trial " << t << " needle " << p->needle_pos << ".."
          << p->needle_end << " of " << n;
      EXPECT_GE(p->needle_pos, last);
      last = p->needle_pos;
      // Near its target in the coded region (half a filler unit, plus the
      // clamp into the region).
      const double target =
          4 + SpreadDepth(t, trials) *
                  static_cast<double>(n - 256 -
                                      (p->needle_end - p->needle_pos) - 4);
      EXPECT_NEAR(static_cast<double>(p->needle_pos), target, 30.0);
    }
  }
}

TEST(RetrievalTest, HaystackKeepsOrderAndRejectsBadSpecs) {
  auto tok = LoadTokenizer();
  if (!tok) GTEST_SKIP() << "model not fetched";
  HaystackSpec spec;
  spec.intro = "Intro.";
  spec.filler = " The grass is green.";
  spec.needles = {" First 11111.", " Second 22222."};
  spec.depths = {0.6, 0.2};  // out of order: the second follows the first
  spec.question = " Which?";
  auto h = BuildHaystack(*tok, 300, spec, {});
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_LE(h->ids.size(), 300u);
  EXPECT_LE(h->needle_end[0], h->needle_pos[1]);
  EXPECT_NE(Piece(*tok, h->ids, h->needle_pos[1], h->needle_end[1])
                .find("Second 22222"),
            std::string::npos);
  spec.depths = {0.5};
  EXPECT_FALSE(BuildHaystack(*tok, 300, spec, {}).ok());
  spec.depths = {0.2, 0.6};
  EXPECT_FALSE(BuildHaystack(*tok, 10, spec, {}).ok());
}

TEST(MultiKeyTest, PromptHidesEveryKeyAndAsksForOne) {
  auto tok = LoadTokenizer();
  if (!tok) GTEST_SKIP() << "model not fetched";
  const std::vector<std::string> words = {"apple", "river", "tiger"};
  const std::vector<std::string> numbers = {"11111", "22222", "33333"};
  const NeedleRegion region{4, 256};
  auto p = BuildMultiKeyPrompt(*tok, 1024, words, numbers, {0.1, 0.5, 0.9}, 1,
                               region);
  ASSERT_TRUE(p.ok()) << p.status();
  const int64_t n = static_cast<int64_t>(p->ids.size());
  EXPECT_LE(n, 1024);
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string needle =
        Piece(*tok, p->ids, p->needle_pos[i], p->needle_end[i]);
    EXPECT_NE(needle.find("magic number for " + words[i] + " is " + numbers[i]),
              std::string::npos)
        << needle;
    if (i > 0) {
      EXPECT_GT(p->needle_pos[i], p->needle_end[i - 1]);
    }
  }
  EXPECT_TRUE(SpansCoded(p->needle_pos, p->needle_end, n, region));
  const std::string tail = Piece(*tok, p->ids, n - 30, n);
  EXPECT_NE(tail.find("magic number for river?"), std::string::npos) << tail;
  EXPECT_FALSE(
      BuildMultiKeyPrompt(*tok, 1024, words, numbers, {0.1, 0.5}, 1, region)
          .ok());
  EXPECT_FALSE(BuildMultiKeyPrompt(*tok, 1024, words, numbers, {0.1, 0.5, 0.9},
                                   3, region)
                   .ok());
}

TEST(MultiKeyTest, TaskAsksAKeyAtTheSpreadDepthWithDistinctKeys) {
  auto tok = LoadTokenizer();
  if (!tok) GTEST_SKIP() << "model not fetched";
  const RetrievalTask task = MultiKeyTask(*tok, 4);
  EXPECT_EQ(task.name, "mkniah");
  std::mt19937_64 rng(7);
  const NeedleRegion region{4, 256};
  int64_t last = -1;
  for (int t = 0; t < 8; ++t) {
    auto p = task.build(2048, t, 8, region, rng);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_LE(p->ids.size(), 2048u);
    ASSERT_EQ(p->needle_pos.size(), 1u);  // only the asked needle counts
    EXPECT_TRUE(SpansCoded(p->needle_pos, p->needle_end,
                           static_cast<int64_t>(p->ids.size()), region));
    EXPECT_GT(p->needle_pos[0], last);  // the asked key moves deeper
    last = p->needle_pos[0];
    const std::string needle =
        Piece(*tok, p->ids, p->needle_pos[0], p->needle_end[0]);
    EXPECT_NE(needle.find(p->expected), std::string::npos) << needle;
    EXPECT_TRUE(task.check(" " + p->expected + ".", *p));
    EXPECT_FALSE(task.check(" 99999.", *p));
    // The four numbers are distinct (the detail lists word=number pairs).
    std::set<std::string> nums;
    for (size_t at = p->detail.find('='); at != std::string::npos;
         at = p->detail.find('=', at + 1)) {
      nums.insert(p->detail.substr(at + 1, 5));
    }
    EXPECT_EQ(nums.size(), 4u) << p->detail;
  }
  EXPECT_FALSE(MultiKeyTask(*tok, 1).build(1024, 0, 1, region, rng).ok());
}

TEST(VarTrackTest, PromptChainsAssignmentsInOrder) {
  auto tok = LoadTokenizer();
  if (!tok) GTEST_SKIP() << "model not fetched";
  const std::vector<std::vector<std::string>> chains = {{"QWE", "RTY"},
                                                        {"ASD", "FGH"}};
  const std::vector<std::string> values = {"48213", "11111"};
  const std::vector<std::pair<int, int>> order = {
      {1, 0}, {0, 0}, {0, 1}, {1, 1}};
  const NeedleRegion region{4, 256};
  auto p = BuildVarTrackPrompt(*tok, 1024, chains, values, order,
                               {0.1, 0.3, 0.6, 0.9}, 0, region);
  ASSERT_TRUE(p.ok()) << p.status();
  const int64_t n = static_cast<int64_t>(p->ids.size());
  EXPECT_LE(n, 1024);
  ASSERT_EQ(p->chain_pos.size(), 2u);
  EXPECT_NE(Piece(*tok, p->ids, p->chain_pos[0], p->chain_end[0])
                .find("VAR QWE = 48213."),
            std::string::npos);
  EXPECT_NE(Piece(*tok, p->ids, p->chain_pos[1], p->chain_end[1])
                .find("VAR RTY = QWE."),
            std::string::npos);
  EXPECT_LT(p->chain_end[0], p->chain_pos[1]);
  EXPECT_TRUE(SpansCoded(p->chain_pos, p->chain_end, n, region));
  const std::string tail = Piece(*tok, p->ids, n - 20, n);
  EXPECT_NE(tail.find("value of RTY? RTY is"), std::string::npos) << tail;
  // A copy before its source is rejected.
  EXPECT_FALSE(BuildVarTrackPrompt(*tok, 1024, chains, values,
                                   {{0, 1}, {0, 0}, {1, 0}, {1, 1}},
                                   {0.1, 0.3, 0.6, 0.9}, 0, region)
                   .ok());
  EXPECT_FALSE(BuildVarTrackPrompt(*tok, 1024, chains, values, order,
                                   {0.1, 0.3}, 0, region)
                   .ok());
}

TEST(VarTrackTest, TaskAsksTheFirstChainsValue) {
  auto tok = LoadTokenizer();
  if (!tok) GTEST_SKIP() << "model not fetched";
  const RetrievalTask task = VarTrackTask(*tok, 2, 2);
  EXPECT_EQ(task.name, "vartrack");
  EXPECT_EQ(task.max_rounds, 3);  // one per hop, then the value
  ASSERT_TRUE(task.follow_up);
  std::mt19937_64 rng(3);
  const NeedleRegion region{4, 256};
  for (int t = 0; t < 6; ++t) {
    auto p = task.build(1024, t, 6, region, rng);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_LE(p->ids.size(), 1024u);
    ASSERT_EQ(p->needle_pos.size(), 3u);  // root + 2 copies of the asked chain
    EXPECT_NE(Piece(*tok, p->ids, p->needle_pos[0], p->needle_end[0])
                  .find(" = " + p->expected + "."),
              std::string::npos);
    for (size_t i = 1; i < 3; ++i) {
      EXPECT_GT(p->needle_pos[i], p->needle_pos[i - 1]);
    }
    EXPECT_TRUE(task.check(" " + p->expected, *p));
    EXPECT_FALSE(task.check(" VAR", *p));
  }
  EXPECT_FALSE(VarTrackTask(*tok, 2, 0).build(1024, 0, 1, region, rng).ok());
}

TEST(VarTrackTest, FollowUpAsksAboutTheNamedVariable) {
  // The answer names the source: ask about it, keeping the first sentence.
  EXPECT_EQ(VarTrackFollowUp(" DDL. The grass is green."),
            " DDL. What is the value of DDL? DDL is");
  // A number ends the rounds, and so does an answer naming no variable.
  EXPECT_EQ(VarTrackFollowUp(" 50560. The"), "");
  EXPECT_EQ(VarTrackFollowUp(" 1. The grass is green."), "");
  EXPECT_EQ(VarTrackFollowUp(" VARX is it"), "");  // four letters: no name
  EXPECT_EQ(VarTrackFollowUp(" the same as KEP"),
            " the same as KEP What is the value of KEP? KEP is");
}

TEST(VarTrackTest, SlidingDepthsMoveAcrossTheRegion) {
  const std::vector<double> first = SlidingDepths(3, 0, 4);
  ASSERT_EQ(first.size(), 3u);
  EXPECT_DOUBLE_EQ(first[0], 0.0625);  // 0.5 * 0.125
  EXPECT_DOUBLE_EQ(first[1], 0.3125);
  EXPECT_DOUBLE_EQ(first[2], 0.5625);
  const std::vector<double> last = SlidingDepths(3, 3, 4);
  EXPECT_DOUBLE_EQ(last[0], 0.4375);
  EXPECT_DOUBLE_EQ(last[2], 0.9375);
  EXPECT_EQ(SlidingDepths(1, 0, 1), std::vector<double>{0.25});
}

TEST(RetrievalTest, ALengthsPromptsDoNotDependOnTheOtherLengths) {
  auto tok = LoadTokenizer();
  if (!tok) GTEST_SKIP() << "model not fetched";
  const RetrievalTask task = MultiKeyTask(*tok, 2);
  RetrievalOptions o;
  o.trials = 3;
  o.seed = 5;
  o.lengths = {1024, 2048};
  auto both = BuildRetrievalPrompts(task, o);
  ASSERT_TRUE(both.ok()) << both.status();
  o.lengths = {2048};
  auto alone = BuildRetrievalPrompts(task, o);
  ASSERT_TRUE(alone.ok()) << alone.status();
  ASSERT_EQ(both->size(), 2u);
  ASSERT_EQ(alone->size(), 1u);
  EXPECT_EQ((*both)[0].length, 1024);
  EXPECT_EQ((*both)[1].length, 2048);
  ASSERT_EQ((*both)[1].prompts.size(), 3u);
  for (int t = 0; t < 3; ++t) {
    const RetrievalPrompt& a = (*both)[1].prompts[t];
    const RetrievalPrompt& b = (*alone)[0].prompts[t];
    EXPECT_EQ(a.ids, b.ids) << "trial " << t;
    EXPECT_EQ(a.detail, b.detail);
    // Trial t asks the same keys at every length.
    EXPECT_EQ((*both)[0].prompts[t].detail, a.detail);
  }
  // A single length's prompts are the seed's stream, as before this helper.
  std::mt19937_64 rng(5);
  for (int t = 0; t < 3; ++t) {
    auto p = task.build(2048, t, 3, NeedleRegion{o.sinks, o.window}, rng);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->ids, (*alone)[0].prompts[t].ids);
  }
  o.trials = 0;
  EXPECT_FALSE(BuildRetrievalPrompts(task, o).ok());
}

}  // namespace
}  // namespace vqkv::tools
