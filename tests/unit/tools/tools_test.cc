// Unit tests of the pieces behind `vqkv eval`: the KV memory account and
// the passkey prompt / answer helpers.
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/baselines/kivi_codec.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "tools/memory.h"
#include "tools/passkey.h"

namespace vqkv::tools {
namespace {

constexpr KvLayout kSmol{30, 3, 64};

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

}  // namespace
}  // namespace vqkv::tools
