#include "model/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/model/model_fixture.h"

namespace vqkv::model {
namespace {

class TokenizerTest : public testing::RealModelTest {
 protected:
  static void SetUpTestSuite() {
    load_model_ = false;  // the tokenizer needs only the metadata
    RealModelTest::SetUpTestSuite();
  }
};

std::vector<std::string> Pieces(const Tokenizer& t, std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : t.PreTokenize(text)) out.emplace_back(p);
  return out;
}

TEST_F(TokenizerTest, MetadataIsSmolLm) {
  EXPECT_EQ(tokenizer_->pre_tokenizer(), "smollm");
  EXPECT_EQ(tokenizer_->vocab_size(), 49152);
  EXPECT_EQ(tokenizer_->TokenText(tokenizer_->eos_id()), "<|im_end|>");
}

// Splits worked out by hand from the rule: each digit alone, then
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
TEST_F(TokenizerTest, PreTokenizerSplit) {
  EXPECT_EQ(Pieces(*tokenizer_, "Hello world's 123  end\n\nx"),
            (std::vector<std::string>{"Hello", " world", "'s", " ", "1", "2",
                                      "3", " ", " end", "\n", "\n", "x"}));
  EXPECT_EQ(Pieces(*tokenizer_, "they'RE ...'ll  "),
            (std::vector<std::string>{"they", "'", "RE", " ...'", "ll", "  "}));
  EXPECT_EQ(
      Pieces(*tokenizer_, "caf\xc3\xa9 \xce\xb1\xce\xb2!?"),
      (std::vector<std::string>{"caf\xc3\xa9", " \xce\xb1\xce\xb2", "!?"}));
  EXPECT_EQ(Pieces(*tokenizer_, " \t x"),
            (std::vector<std::string>{" \t", " x"}));
}

TEST_F(TokenizerTest, CommonWordsAreSingleTokens) {
  for (const char* w : {" the", " world", "Hello", " and"}) {
    const std::vector<int32_t> ids = tokenizer_->Encode(w);
    ASSERT_EQ(ids.size(), 1u) << w;
    EXPECT_EQ(tokenizer_->TokenText(ids[0]), w);
  }
  // Digits never merge.
  EXPECT_EQ(tokenizer_->Encode("2024").size(), 4u);
}

TEST_F(TokenizerTest, SpecialTokensOnlyWhenAsked) {
  const std::string text = "<|im_start|>user\nhi<|im_end|>";
  const std::vector<int32_t> special = tokenizer_->Encode(text, true);
  EXPECT_EQ(special.front(), 1);  // <|im_start|>
  EXPECT_EQ(special.back(), tokenizer_->eos_id());
  const std::vector<int32_t> plain = tokenizer_->Encode(text, false);
  EXPECT_GT(plain.size(), special.size());
  EXPECT_EQ(tokenizer_->Decode(special), text);
  EXPECT_EQ(tokenizer_->Decode(plain), text);
}

TEST_F(TokenizerTest, RoundTripsArbitraryBytes) {
  const std::string cases[] = {
      "",
      "plain ASCII text, with punctuation; and 42 numbers.",
      "  leading and trailing spaces  ",
      "tabs\tand\r\nwindows line ends\n\n\n",
      "unicode: na\xc3\xafve \xe2\x80\x9cquotes\xe2\x80\x9d \xe6\x97\xa5\xe6"
      "\x9c\xac \xf0\x9f\x98\x80",
      std::string("invalid utf-8: \xc3(\x80 \xe2\x82 end") +
          std::string(1, '\0') + "nul",
  };
  for (const std::string& s : cases) {
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(s)), s);
  }
  // A lone byte round-trips when the vocabulary has a token for it and
  // becomes the unknown token (id 0 here) otherwise; never anything else.
  int round_trips = 0;
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    const std::vector<int32_t> ids = tokenizer_->Encode(one);
    ASSERT_EQ(ids.size(), 1u) << b;
    if (tokenizer_->Decode(ids) == one) {
      ++round_trips;
    } else {
      EXPECT_EQ(ids[0], 0) << b;
    }
  }
  EXPECT_GE(round_trips, 230);  // every printable and UTF-8 lead byte
}

TEST_F(TokenizerTest, RoundTripsTheEvalTexts) {
  const std::filesystem::path dir(VQKV_TEXT_DIR);
  if (!std::filesystem::is_directory(dir)) {
    GTEST_SKIP() << "eval texts not found at " << dir;
  }
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".txt") continue;
    std::ifstream f(entry.path(), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    // Slices from the start, middle and end (about 60 KB per file).
    for (size_t start : {size_t{0}, text.size() / 2, text.size() - 20000}) {
      if (start > text.size()) continue;
      const std::string slice = text.substr(start, 20000);
      const std::vector<int32_t> ids = tokenizer_->Encode(slice);
      EXPECT_EQ(tokenizer_->Decode(ids), slice) << entry.path();
      // English prose: a few bytes per token.
      EXPECT_GT(slice.size(), 2 * ids.size()) << entry.path();
    }
    ++files;
  }
  EXPECT_GT(files, 0);
}

}  // namespace
}  // namespace vqkv::model
