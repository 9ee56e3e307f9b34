#include "base/coding.h"

#include <string>

#include "gtest/gtest.h"

namespace vqkv::base {
namespace {

TEST(CodingTest, LittleEndianBytesAreTheDocumentedOnes) {
  std::string s;
  PutFixed32(&s, 0x04030201u);
  PutFixed64(&s, 0x0c0b0a0908070605ull);
  ASSERT_EQ(s.size(), 12u);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(s[i], static_cast<char>(i + 1)) << i;
  EXPECT_EQ(DecodeFixed32(s.data()), 0x04030201u);
  EXPECT_EQ(DecodeFixed64(s.data() + 4), 0x0c0b0a0908070605ull);
}

TEST(CodingTest, RoundTripsExtremes) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{0x80}, ~uint64_t{0},
                     uint64_t{0xff00ff00ff00ff00}}) {
    char buf[8];
    EncodeFixed64(buf, v);
    EXPECT_EQ(DecodeFixed64(buf), v);
    EncodeBigEndian64(buf, v);
    EXPECT_EQ(DecodeBigEndian64(buf), v);
    EncodeFixed32(buf, static_cast<uint32_t>(v));
    EXPECT_EQ(DecodeFixed32(buf), static_cast<uint32_t>(v));
  }
}

TEST(CodingTest, BigEndianSortsNumerically) {
  char a[8], b[8];
  EncodeBigEndian64(a, 0x00ff);
  EncodeBigEndian64(b, 0x0100);
  EXPECT_LT(std::string(a, 8), std::string(b, 8));
  EXPECT_EQ(a[7], static_cast<char>(0xff));
}

TEST(CodingTest, LengthPrefixed) {
  std::string s;
  PutLengthPrefixed(&s, "abc");
  EXPECT_EQ(s, std::string("\x03\x00\x00\x00"
                           "abc",
                           7));
}

// Protobuf's varint: the bytes its documentation gives for 1, 150 and 300,
// and the 10-byte form of the largest value.
TEST(CodingTest, VarintBytesAreProtobufs) {
  auto varint = [](uint64_t v) {
    std::string s;
    PutVarint64(&s, v);
    return s;
  };
  EXPECT_EQ(varint(0), std::string("\x00", 1));
  EXPECT_EQ(varint(1), "\x01");
  EXPECT_EQ(varint(127), "\x7f");
  EXPECT_EQ(varint(150), "\x96\x01");
  EXPECT_EQ(varint(300), "\xac\x02");
  EXPECT_EQ(varint(~uint64_t{0}), "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01");
}

}  // namespace
}  // namespace vqkv::base
