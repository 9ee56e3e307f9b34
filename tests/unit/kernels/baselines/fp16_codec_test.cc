#include "kernels/baselines/fp16_codec.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/fp16.h"

namespace vqkv {
namespace {

constexpr KvLayout kLayout{.layers = 2, .kv_heads = 3, .head_dim = 8};

std::vector<float> RandomTensor(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(Fp16CodecTest, RoundTripEqualsHalfCast) {
  auto codec = Fp16Codec::Create(kLayout);
  ASSERT_TRUE(codec.ok()) << codec.status();
  const int64_t tokens = 5, n = tokens * kLayout.ElementsPerToken();
  const std::vector<float> k = RandomTensor(n, 1), v = RandomTensor(n, 2);
  std::vector<uint8_t> payload((*codec)->EncodedBytes(tokens));
  ASSERT_EQ(payload.size(), static_cast<size_t>(n * 4));
  ASSERT_TRUE(
      (*codec)
          ->Encode(k.data(), v.data(), tokens, payload.data(), payload.size())
          .ok());
  // Keys first, then values, each little-endian binary16 in tensor order.
  for (int64_t i = 0; i < n; ++i) {
    uint16_t hk, hv;
    std::memcpy(&hk, payload.data() + 2 * i, 2);
    std::memcpy(&hv, payload.data() + 2 * (n + i), 2);
    EXPECT_EQ(hk, FloatToHalfRef(k[i])) << i;
    EXPECT_EQ(hv, FloatToHalfRef(v[i])) << i;
  }
  std::vector<float> k2(n), v2(n);
  ASSERT_TRUE(
      (*codec)
          ->Decode(payload.data(), payload.size(), tokens, k2.data(), v2.data())
          .ok());
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(k2[i], HalfToFloatRef(FloatToHalfRef(k[i])));
    EXPECT_EQ(v2[i], HalfToFloatRef(FloatToHalfRef(v[i])));
    // binary16 has an 11-bit significand: relative error <= 2^-11.
    EXPECT_LE(std::abs(k2[i] - k[i]), std::ldexp(std::abs(k[i]), -11) + 1e-7f);
  }
}

TEST(Fp16CodecTest, DecodeLayersIsTheSliceOfDecode) {
  auto codec = Fp16Codec::Create(kLayout);
  ASSERT_TRUE(codec.ok()) << codec.status();
  const int64_t tokens = 5, n = tokens * kLayout.ElementsPerToken();
  const int64_t per_layer = n / kLayout.layers;
  const std::vector<float> k = RandomTensor(n, 3), v = RandomTensor(n, 4);
  std::vector<uint8_t> payload((*codec)->EncodedBytes(tokens));
  ASSERT_TRUE(
      (*codec)
          ->Encode(k.data(), v.data(), tokens, payload.data(), payload.size())
          .ok());
  std::vector<float> k_all(n), v_all(n);
  ASSERT_TRUE((*codec)
                  ->Decode(payload.data(), payload.size(), tokens, k_all.data(),
                           v_all.data())
                  .ok());
  for (int layer = 0; layer < kLayout.layers; ++layer) {
    std::vector<float> k1(per_layer), v1(per_layer);
    ASSERT_TRUE((*codec)
                    ->DecodeLayers(payload.data(), payload.size(), tokens,
                                   layer, 1, k1.data(), v1.data())
                    .ok());
    EXPECT_EQ(k1, std::vector<float>(k_all.begin() + layer * per_layer,
                                     k_all.begin() + (layer + 1) * per_layer));
    EXPECT_EQ(v1, std::vector<float>(v_all.begin() + layer * per_layer,
                                     v_all.begin() + (layer + 1) * per_layer));
  }
  std::vector<float> k1(per_layer), v1(per_layer);
  EXPECT_EQ((*codec)
                ->DecodeLayers(payload.data(), payload.size(), tokens,
                               kLayout.layers, 1, k1.data(), v1.data())
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Fp16CodecTest, BitsAndRatio) {
  auto codec = Fp16Codec::Create(kLayout);
  ASSERT_TRUE(codec.ok());
  EXPECT_EQ((*codec)->BitsPerElement(), 16.0);
  EXPECT_EQ((*codec)->CompressionRatio(), 0.0);
  EXPECT_EQ((*codec)->id(), CodecId::kFp16);
  EXPECT_EQ((*codec)->codebook_hash(), 0u);
  EXPECT_TRUE((*codec)
                  ->Fit(std::vector<float>(48).data(),
                        std::vector<float>(48).data(), 1, FitOptions{})
                  .ok());
}

TEST(Fp16CodecTest, BadArguments) {
  EXPECT_EQ(Fp16Codec::Create(KvLayout{0, 1, 8}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto codec = Fp16Codec::Create(kLayout);
  ASSERT_TRUE(codec.ok());
  const int64_t n = 2 * kLayout.ElementsPerToken();
  std::vector<float> k(n), v(n);
  std::vector<uint8_t> out((*codec)->EncodedBytes(2));
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(
      (*codec)->Encode(k.data(), v.data(), 0, out.data(), out.size()).code(),
      kInvalid);
  EXPECT_EQ(
      (*codec)->Encode(nullptr, v.data(), 2, out.data(), out.size()).code(),
      kInvalid);
  EXPECT_EQ((*codec)
                ->Encode(k.data(), v.data(), 2, out.data(), out.size() - 1)
                .code(),
            kInvalid);
  ASSERT_TRUE(
      (*codec)->Encode(k.data(), v.data(), 2, out.data(), out.size()).ok());
  EXPECT_EQ((*codec)
                ->Decode(out.data(), out.size() - 1, 2, k.data(), v.data())
                .code(),
            kInvalid);
  EXPECT_EQ(
      (*codec)->Decode(out.data(), out.size(), 1, k.data(), v.data()).code(),
      kInvalid);
  EXPECT_EQ(
      (*codec)->Decode(out.data(), out.size(), 2, nullptr, v.data()).code(),
      kInvalid);
}

}  // namespace
}  // namespace vqkv
