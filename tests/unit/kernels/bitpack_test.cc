#include "kernels/bitpack.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace vqkv {
namespace {

std::vector<uint16_t> RandomCodes(int64_t n, int bits, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint16_t> v(n);
  for (auto& c : v) c = static_cast<uint16_t>(rng() & ((1u << bits) - 1));
  return v;
}

class BitpackWidthTest : public ::testing::TestWithParam<int> {};

TEST_P(BitpackWidthTest, RoundTripsExactlyAndMatchesReference) {
  const int bits = GetParam();
  for (int64_t n : {1, 2, 3, 7, 8, 9, 63, 64, 65, 1000, 4099}) {
    std::vector<uint16_t> codes = RandomCodes(n, bits, 17 * n + bits);
    // Extremes too: all-ones and zero codes.
    codes[0] = static_cast<uint16_t>((1u << bits) - 1);
    if (n > 1) codes[n - 1] = 0;
    std::vector<uint8_t> packed(PackedBytes(n, bits) + 3, 0xAB);
    ASSERT_TRUE(
        PackBits(codes.data(), n, bits, packed.data(), packed.size()).ok());
    std::vector<uint8_t> ref(PackedBytes(n, bits));
    PackBitsRef(codes.data(), n, bits, ref.data());
    ASSERT_TRUE(std::equal(ref.begin(), ref.end(), packed.begin()))
        << "bits=" << bits << " n=" << n;
    // Bytes past the packed length are untouched.
    for (size_t i = PackedBytes(n, bits); i < packed.size(); ++i) {
      EXPECT_EQ(packed[i], 0xAB);
    }
    std::vector<uint16_t> back(n, 0xFFFF);
    ASSERT_TRUE(
        UnpackBits(packed.data(), PackedBytes(n, bits), n, bits, back.data())
            .ok());
    EXPECT_EQ(back, codes) << "bits=" << bits << " n=" << n;
    std::vector<uint16_t> back_ref(n);
    UnpackBitsRef(packed.data(), n, bits, back_ref.data());
    EXPECT_EQ(back_ref, codes);
  }
}

INSTANTIATE_TEST_SUITE_P(AllWidths, BitpackWidthTest, ::testing::Range(1, 17));

TEST(BitpackTest, LayoutIsLsbFirst) {
  // Two 4-bit codes 0x1 and 0x2 pack into one byte 0x21; a 9-bit 0x1FF spills.
  uint16_t codes[2] = {0x1, 0x2};
  uint8_t out[1];
  ASSERT_TRUE(PackBits(codes, 2, 4, out, 1).ok());
  EXPECT_EQ(out[0], 0x21);
  uint16_t wide[1] = {0x1FF};
  uint8_t out2[2];
  ASSERT_TRUE(PackBits(wide, 1, 9, out2, 2).ok());
  EXPECT_EQ(out2[0], 0xFF);
  EXPECT_EQ(out2[1], 0x01);
}

TEST(BitpackTest, RejectsBadWidths) {
  uint16_t codes[1] = {0};
  uint8_t out[4];
  EXPECT_EQ(PackBits(codes, 1, 0, out, 4).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PackBits(codes, 1, 17, out, 4).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UnpackBits(out, 4, 1, 0, codes).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UnpackBits(out, 4, 1, 17, codes).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BitpackTest, RejectsCodesThatDoNotFit) {
  uint16_t codes[2] = {3, 4};  // 4 needs 3 bits
  uint8_t out[1];
  absl::Status s = PackBits(codes, 2, 2, out, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("position 1"), std::string::npos) << s;
}

TEST(BitpackTest, RejectsShortBuffers) {
  std::vector<uint16_t> codes(10, 1);
  std::vector<uint8_t> out(PackedBytes(10, 10));
  EXPECT_EQ(PackBits(codes.data(), 10, 10, out.data(), out.size() - 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UnpackBits(out.data(), out.size() - 1, 10, 10, codes.data()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv
