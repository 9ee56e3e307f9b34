// DecodeUtf8 on valid, invalid and truncated input, AppendUtf8 as its
// inverse, and the character classes the pre-tokenizer uses.
#include "model/unicode.h"

#include <random>
#include <string>

#include "gtest/gtest.h"

namespace vqkv::model {
namespace {

struct Decoded {
  uint32_t cp;
  size_t len;
};

Decoded Decode(const std::string& s, size_t pos = 0) {
  size_t len = 0;
  const uint32_t cp = DecodeUtf8(s, pos, &len);
  return {cp, len};
}

TEST(UnicodeTest, DecodesEveryEncodedLength) {
  EXPECT_EQ(Decode("A").cp, 0x41u);
  EXPECT_EQ(Decode("A").len, 1u);
  EXPECT_EQ(Decode("\xC3\xA9").cp, 0xE9u);  // e acute
  EXPECT_EQ(Decode("\xC3\xA9").len, 2u);
  EXPECT_EQ(Decode("\xE2\x82\xAC").cp, 0x20ACu);  // euro sign
  EXPECT_EQ(Decode("\xE2\x82\xAC").len, 3u);
  EXPECT_EQ(Decode("\xF0\x9F\x98\x80").cp, 0x1F600u);  // emoji
  EXPECT_EQ(Decode("\xF0\x9F\x98\x80").len, 4u);
  EXPECT_EQ(Decode("x\xC3\xA9", 1).cp, 0xE9u);
}

TEST(UnicodeTest, InvalidSequencesConsumeOneByteAsReplacement) {
  for (const std::string& bad : {
           std::string("\x80"),              // stray continuation byte
           std::string("\xC0\x80"),          // overlong NUL
           std::string("\xE0\x80\x80"),      // overlong
           std::string("\xED\xA0\x80"),      // UTF-16 surrogate
           std::string("\xF4\x90\x80\x80"),  // above U+10FFFF
           std::string("\xF8\x88\x80\x80"),  // 5-byte lead
           std::string("\xE2\x82"),          // truncated at the end
           std::string("\xC3"
                       "A"),  // continuation missing
       }) {
    const Decoded d = Decode(bad);
    EXPECT_EQ(d.cp, 0xFFFDu) << testing::PrintToString(bad);
    EXPECT_EQ(d.len, 1u) << testing::PrintToString(bad);
  }
}

TEST(UnicodeTest, WalkingArbitraryBytesConsumesEachExactlyOnce) {
  std::mt19937 rng(3);
  std::string bytes(4096, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  size_t pos = 0, steps = 0;
  while (pos < bytes.size()) {
    size_t len = 0;
    DecodeUtf8(bytes, pos, &len);
    ASSERT_GE(len, 1u);
    ASSERT_LE(len, 4u);
    pos += len;
    ++steps;
  }
  EXPECT_EQ(pos, bytes.size());
  EXPECT_GT(steps, bytes.size() / 4);
}

TEST(UnicodeTest, AppendUtf8IsTheInverse) {
  for (uint32_t cp = 0; cp <= 0x10FFFF; cp += (cp < 0x3000 ? 1 : 97)) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    std::string s;
    AppendUtf8(cp, &s);
    const Decoded d = Decode(s);
    ASSERT_EQ(d.cp, cp) << std::hex << cp;
    ASSERT_EQ(d.len, s.size()) << std::hex << cp;
  }
}

TEST(UnicodeTest, CharacterClasses) {
  EXPECT_TRUE(IsLetter('a'));
  EXPECT_TRUE(IsLetter(0xE9));    // e acute
  EXPECT_TRUE(IsLetter(0x4E2D));  // CJK
  EXPECT_FALSE(IsLetter('7'));
  EXPECT_FALSE(IsLetter(' '));
  EXPECT_TRUE(IsNumber('7'));
  EXPECT_TRUE(IsNumber(0x0663));  // Arabic-Indic digit three
  EXPECT_TRUE(IsNumber(0x00BD));  // vulgar fraction one half (No)
  EXPECT_FALSE(IsNumber('x'));
  EXPECT_TRUE(IsWhitespace(' '));
  EXPECT_TRUE(IsWhitespace('\n'));
  EXPECT_TRUE(IsWhitespace(0x3000));  // ideographic space
  EXPECT_FALSE(IsWhitespace('_'));
}

}  // namespace
}  // namespace vqkv::model
