// VqCodec with a batch encoder (kernels/rvq_batch_encoder.h): one call per
// Encode with every quantizer's job, the same payload as the CPU path, its
// errors passed on, and never for beam search.
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/block.h"
#include "kernels/codebook_set.h"
#include "kernels/rvq_batch_encoder.h"
#include "kernels/vq_codec.h"
#include "tests/testing/counting_batch_encoder.h"
#include "tests/testing/fitted_codebook_set.h"
#include "tests/testing/normal_floats.h"

namespace vqkv {
namespace {

CodebookSet TinySet(KeySplit split, bool per_head) {
  absl::StatusOr<CodebookSet> set = testing::FitSyntheticCodebookSet(
      testing::TinyCodebookConfig(split, per_head), 64,
      {[](int l, int s, int g) { return uint64_t(100 * l + 10 * s + g); },
       [](int l, int s) { return uint64_t(1000 + 100 * l + 10 * s); }});
  EXPECT_TRUE(set.ok()) << set.status();
  return *std::move(set);
}

TEST(VqCodecBatchEncoderTest, OneCallPerEncodeAndTheCpuPayload) {
  for (const KeySplit split : {KeySplit::kNone, KeySplit::kRopeAdjacentPairs}) {
    for (const bool per_head : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "split " << int(split) << " per_head " << per_head);
      const CodebookSet set = TinySet(split, per_head);
      absl::StatusOr<std::unique_ptr<VqCodec>> cpu =
          VqCodec::FromCodebookSet(set);
      absl::StatusOr<std::unique_ptr<VqCodec>> batched =
          VqCodec::FromCodebookSet(set);
      ASSERT_TRUE(cpu.ok() && batched.ok());
      auto encoder = std::make_shared<testing::CountingBatchEncoder>();
      (*batched)->SetBatchEncoder(encoder);
      const KvLayout& l = (*cpu)->layout();
      constexpr int64_t kTokens = 5;
      const size_t floats =
          size_t{1} * l.layers * kTokens * l.kv_heads * l.head_dim;
      const std::vector<float> keys = testing::NormalFloats(floats, 1);
      const std::vector<float> values = testing::NormalFloats(floats, 2);
      std::vector<uint8_t> a((*cpu)->EncodedBytes(kTokens)),
          b((*batched)->EncodedBytes(kTokens));
      ASSERT_TRUE(
          (*cpu)
              ->Encode(keys.data(), values.data(), kTokens, a.data(), a.size())
              .ok());
      ASSERT_TRUE(
          (*batched)
              ->Encode(keys.data(), values.data(), kTokens, b.data(), b.size())
              .ok());
      EXPECT_EQ(a, b);
      EXPECT_EQ(encoder->calls.load(), 1);
      const int groups = split == KeySplit::kNone ? 1 : 2;
      const int slots = per_head ? l.kv_heads : 1;
      EXPECT_EQ(encoder->job_count.load(), l.layers * slots * (groups + 1));
    }
  }
}

// Many payloads (and whole blocks, with the first one's sink tokens kept
// in fp16) in one encoder call, each as its own Encode gives it.
TEST(VqCodecBatchEncoderTest, EncodeManyAndEncodeBlocksMakeOneCall) {
  const CodebookSet set = TinySet(KeySplit::kRopeAdjacentPairs, false);
  absl::StatusOr<std::unique_ptr<VqCodec>> cpu = VqCodec::FromCodebookSet(set);
  absl::StatusOr<std::unique_ptr<VqCodec>> batched =
      VqCodec::FromCodebookSet(set);
  ASSERT_TRUE(cpu.ok() && batched.ok());
  auto encoder = std::make_shared<testing::CountingBatchEncoder>();
  (*batched)->SetBatchEncoder(encoder);
  const KvLayout& l = (*cpu)->layout();
  const size_t per_token = size_t{1} * l.layers * l.kv_heads * l.head_dim;
  const int64_t tokens[] = {1, 5, 16};
  std::vector<std::vector<float>> k, v;
  std::vector<std::vector<uint8_t>> want, got;
  std::vector<Codec::EncodeRequest> requests;
  for (int i = 0; i < 3; ++i) {
    k.push_back(testing::NormalFloats(per_token * tokens[i], 10 + i));
    v.push_back(testing::NormalFloats(per_token * tokens[i], 20 + i));
    want.emplace_back((*cpu)->EncodedBytes(tokens[i]));
    got.emplace_back(want.back().size());
    ASSERT_TRUE((*cpu)
                    ->Encode(k[i].data(), v[i].data(), tokens[i],
                             want[i].data(), want[i].size())
                    .ok());
  }
  for (int i = 0; i < 3; ++i) {
    requests.push_back(
        {k[i].data(), v[i].data(), tokens[i], got[i].data(), got[i].size()});
  }
  ASSERT_TRUE((*batched)->EncodeMany(requests).ok());
  EXPECT_EQ(got, want);
  EXPECT_EQ(encoder->calls.load(), 1);
  const int jobs_per_payload = l.layers * 3;  // two key groups + values
  EXPECT_EQ(encoder->job_count.load(), 3 * jobs_per_payload);

  // Blocks of 16 tokens, the first keeping 4 in fp16.
  std::vector<BlockInput> inputs;
  for (int i = 0; i < 3; ++i) {
    k[i] = testing::NormalFloats(per_token * 16, 30 + i);
    v[i] = testing::NormalFloats(per_token * 16, 40 + i);
    BlockOptions o;
    o.fp16_tokens = i == 0 ? 4 : 0;
    o.keys_post_rope = true;
    inputs.push_back({k[i].data(), v[i].data(), o});
  }
  encoder->calls.store(0);
  absl::StatusOr<std::vector<std::vector<uint8_t>>> blocks =
      EncodeBlocks(**batched, inputs, 16);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ(encoder->calls.load(), 1);
  ASSERT_EQ(blocks->size(), 3u);
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<std::vector<uint8_t>> one =
        EncodeBlock(**cpu, k[i].data(), v[i].data(), 16, inputs[i].options);
    ASSERT_TRUE(one.ok());
    EXPECT_EQ((*blocks)[i], *one) << "block " << i;
  }
}

TEST(VqCodecBatchEncoderTest, EncoderErrorsFailTheEncode) {
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      VqCodec::FromCodebookSet(TinySet(KeySplit::kNone, false));
  ASSERT_TRUE(codec.ok());
  auto encoder = std::make_shared<testing::CountingBatchEncoder>();
  encoder->error = absl::InternalError("device lost");
  (*codec)->SetBatchEncoder(encoder);
  const KvLayout& l = (*codec)->layout();
  const std::vector<float> kv = testing::NormalFloats(
      size_t{1} * l.layers * 2 * l.kv_heads * l.head_dim, 3);
  std::vector<uint8_t> out((*codec)->EncodedBytes(2));
  const absl::Status s =
      (*codec)->Encode(kv.data(), kv.data(), 2, out.data(), out.size());
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.message(), "device lost");
}

TEST(VqCodecBatchEncoderTest, BeamSearchStaysOnTheCpu) {
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      VqCodec::FromCodebookSet(TinySet(KeySplit::kNone, false), 2);
  ASSERT_TRUE(codec.ok());
  auto encoder = std::make_shared<testing::CountingBatchEncoder>();
  (*codec)->SetBatchEncoder(encoder);
  const KvLayout& l = (*codec)->layout();
  const std::vector<float> kv = testing::NormalFloats(
      size_t{1} * l.layers * 3 * l.kv_heads * l.head_dim, 4);
  std::vector<uint8_t> out((*codec)->EncodedBytes(3));
  ASSERT_TRUE(
      (*codec)->Encode(kv.data(), kv.data(), 3, out.data(), out.size()).ok());
  EXPECT_EQ(encoder->calls.load(), 0);
}

TEST(VqCodecBatchEncoderTest, RefittingDropsTheEncoder) {
  VqConfig config;
  config.key_stages = 2;
  config.key_bits = 3;
  config.value_stages = 2;
  config.value_bits = 3;
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      VqCodec::Create(KvLayout{1, 1, 8}, config);
  ASSERT_TRUE(codec.ok()) << codec.status();
  const std::vector<float> kv = testing::NormalFloats(64 * 8, 5);
  ASSERT_TRUE((*codec)->Fit(kv.data(), kv.data(), 64, {}).ok());
  (*codec)->SetBatchEncoder(std::make_shared<testing::CountingBatchEncoder>());
  EXPECT_TRUE((*codec)->has_batch_encoder());
  ASSERT_TRUE((*codec)->FitLayer(0, kv.data(), kv.data(), 64, {}).ok());
  EXPECT_FALSE((*codec)->has_batch_encoder());
}

}  // namespace
}  // namespace vqkv
