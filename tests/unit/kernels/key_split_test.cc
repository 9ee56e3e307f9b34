// KeyGroupDims against the RoPE pairings it models, and the split names.
#include "kernels/key_split.h"

#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace vqkv {
namespace {

std::vector<int> Range(int from, int to) {
  std::vector<int> v;
  for (int d = from; d < to; ++d) v.push_back(d);
  return v;
}

TEST(KeySplitTest, NoneIsOneGroupOfAllDims) {
  auto g = KeyGroupDims(KeySplit::kNone, 6);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->size(), 1u);
  EXPECT_EQ((*g)[0], Range(0, 6));
}

TEST(KeySplitTest, AdjacentPairsSplitTheHeadInHalves) {
  // GGUF pairs (2i, 2i+1) rotate with frequency index i: the first half of
  // the dims carries the high frequencies.
  auto g = KeyGroupDims(KeySplit::kRopeAdjacentPairs, 8);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->size(), 2u);
  EXPECT_EQ((*g)[0], Range(0, 4));
  EXPECT_EQ((*g)[1], Range(4, 8));
}

TEST(KeySplitTest, HalfRotateKeepsEachRotationPairInOneGroup) {
  // Hugging Face pairs (i, i + D/2): frequency indices [0, D/4) are high.
  auto g = KeyGroupDims(KeySplit::kRopeHalfRotate, 8);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->size(), 2u);
  EXPECT_EQ((*g)[0], (std::vector<int>{0, 1, 4, 5}));
  EXPECT_EQ((*g)[1], (std::vector<int>{2, 3, 6, 7}));
  for (int head_dim : {64, 128}) {
    auto h = KeyGroupDims(KeySplit::kRopeHalfRotate, head_dim);
    ASSERT_TRUE(h.ok());
    const std::set<int> high((*h)[0].begin(), (*h)[0].end());
    for (int i = 0; i < head_dim / 2; ++i) {
      EXPECT_EQ(high.count(i), high.count(i + head_dim / 2)) << i;
    }
    EXPECT_EQ((*h)[0].size() + (*h)[1].size(), static_cast<size_t>(head_dim));
  }
}

TEST(KeySplitTest, RejectsHeadDimsTheSplitCannotDivide) {
  EXPECT_EQ(KeyGroupDims(KeySplit::kRopeAdjacentPairs, 7).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyGroupDims(KeySplit::kRopeHalfRotate, 6).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyGroupDims(KeySplit::kNone, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyGroupDims(static_cast<KeySplit>(9), 8).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KeySplitTest, CanonicalNamesAndShortFormsParse) {
  for (KeySplit s : {KeySplit::kNone, KeySplit::kRopeAdjacentPairs,
                     KeySplit::kRopeHalfRotate}) {
    auto parsed = ParseKeySplit(KeySplitName(s));
    ASSERT_TRUE(parsed.ok()) << KeySplitName(s);
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_EQ(*ParseKeySplit("rope"), KeySplit::kRopeAdjacentPairs);
  EXPECT_EQ(*ParseKeySplit("rope-adjacent"), KeySplit::kRopeAdjacentPairs);
  EXPECT_EQ(*ParseKeySplit("rope-half"), KeySplit::kRopeHalfRotate);
  auto bad = ParseKeySplit("diagonal");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("rope_half_rotate"), std::string::npos);
}

}  // namespace
}  // namespace vqkv
