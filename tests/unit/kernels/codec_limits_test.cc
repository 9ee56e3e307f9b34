// Every codec accepts the same token range, 1..kMaxCodecTokens (the block
// header's u32 token field), and says so the same way.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/codec.h"
#include "kernels/codec_factory.h"
#include "kernels/vq_codec.h"

namespace vqkv {
namespace {

void ExpectLimitIsTheBlockHeaders(const Codec& codec) {
  EXPECT_GT(codec.EncodedBytes(kMaxCodecTokens), 0u);
  EXPECT_EQ(codec.EncodedBytes(kMaxCodecTokens + 1), 0u);
  // The range check comes before any buffer is touched.
  std::vector<float> kv(64);
  uint8_t out[16];
  const absl::Status s =
      codec.Encode(kv.data(), kv.data(), kMaxCodecTokens + 1, out, 16);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(std::to_string(kMaxCodecTokens)),
            std::string::npos)
      << s;
}

TEST(CodecLimitsTest, EveryCodecRefusesMoreThanTheBlockHeaderHolds) {
  const KvLayout layout{1, 1, 64};
  for (const std::string name : {"fp16", "kivi2", "kivi4"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<std::unique_ptr<Codec>> codec =
        MakeCodec(name, layout, nullptr, 1);
    ASSERT_TRUE(codec.ok()) << codec.status();
    ExpectLimitIsTheBlockHeaders(**codec);
  }
}

TEST(CodecLimitsTest, VqCodecToo) {
  const KvLayout layout{1, 1, 8};
  VqConfig cfg;
  cfg.key_split = KeySplit::kNone;
  cfg.key_stages = 1;
  cfg.key_bits = 2;
  cfg.value_stages = 1;
  cfg.value_bits = 2;
  absl::StatusOr<std::unique_ptr<VqCodec>> codec = VqCodec::Create(layout, cfg);
  ASSERT_TRUE(codec.ok()) << codec.status();
  std::vector<float> kv(64 * 8);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = static_cast<float>(i % 13);
  ASSERT_TRUE((*codec)->Fit(kv.data(), kv.data(), 64, FitOptions{}).ok());
  ExpectLimitIsTheBlockHeaders(**codec);
}

}  // namespace
}  // namespace vqkv
