#include "kernels/fp16.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_features.h"

namespace vqkv {
namespace {

TEST(Fp16Test, KnownValues) {
  EXPECT_EQ(FloatToHalfRef(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalfRef(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalfRef(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalfRef(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalfRef(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalfRef(65520.0f), 0x7C00);  // rounds up to infinity
  EXPECT_EQ(FloatToHalfRef(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(FloatToHalfRef(5.960464477539063e-08f), 0x0001);  // min subnormal
  EXPECT_EQ(FloatToHalfRef(1e-9f), 0x0000);
  EXPECT_TRUE(std::isnan(HalfToFloatRef(FloatToHalfRef(std::nanf("")))));
  EXPECT_EQ(HalfToFloatRef(0x3555), 0.333251953125f);
}

TEST(Fp16Test, EveryHalfRoundTripsThroughFloat) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloatRef(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToHalfRef(f), h) << std::hex << h;
  }
}

TEST(Fp16Test, TiesRoundToEven) {
  // 1 + 2^-11 lies halfway between 1 and the next half (1 + 2^-10).
  EXPECT_EQ(FloatToHalfRef(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(FloatToHalfRef(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
}

TEST(Fp16Test, BatchMatchesScalarReference) {
  std::printf("fp16 batch conversion uses: %s\n",
              cpu::Features().f16c ? "f16c" : "scalar");
  std::mt19937 rng(3);
  std::vector<float> in(1037);
  for (auto& v : in) {
    uint32_t bits = rng();
    std::memcpy(&v, &bits, 4);
    if (std::isnan(v)) v = 1.5f;
  }
  in[0] = 1e-6f;  // subnormal half
  std::vector<uint16_t> half(in.size());
  FloatToHalf(in.data(), in.size(), half.data());
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(half[i], FloatToHalfRef(in[i])) << i << " " << in[i];
  }
  std::vector<float> back(in.size());
  HalfToFloat(half.data(), half.size(), back.data());
  for (size_t i = 0; i < in.size(); ++i) {
    ASSERT_EQ(std::memcmp(&back[i], &(const float&)HalfToFloatRef(half[i]), 4),
              0)
        << i;
  }
}

}  // namespace
}  // namespace vqkv
