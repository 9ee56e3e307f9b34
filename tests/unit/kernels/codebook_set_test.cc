#include "kernels/codebook_set.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/kernels/rvq_test_data.h"

namespace vqkv {
namespace {

CodebookConfig SmallConfig(KeySplit split, bool per_head) {
  CodebookConfig c;
  c.layout = KvLayout{2, 2, 8};
  c.key_split = split;
  c.key_group_stages =
      split == KeySplit::kNone ? std::vector<int>{3} : std::vector<int>{2, 1};
  c.key_bits = 4;
  c.value_stages = 2;
  c.value_bits = 3;
  c.per_head = per_head;
  c.keys_post_rope = true;
  return c;
}

// A complete set with codebooks fitted on synthetic data.
CodebookSet FittedSet(const CodebookConfig& c, uint64_t seed) {
  absl::StatusOr<CodebookSet> set = CodebookSet::Create(c);
  EXPECT_TRUE(set.ok()) << set.status();
  for (int l = 0; l < c.layout.layers; ++l) {
    for (int s = 0; s < c.slots_per_layer(); ++s) {
      for (size_t g = 0; g < set->key_group_dims().size(); ++g) {
        RvqParams p;
        p.dim = static_cast<int>(set->key_group_dims()[g].size());
        p.stages = c.key_group_stages[g];
        p.bits = c.key_bits;
        p.seed = seed + l * 10 + s;
        p.training.kmeans_iterations = 2;
        const std::vector<float> x =
            testing::KeyLikeVectors(200, p.dim, p.seed);
        ResidualQuantizer q;
        EXPECT_TRUE(q.Fit(p, x.data(), 200).ok());
        EXPECT_TRUE(set->SetKey(l, s, int(g), std::move(q)).ok());
      }
      RvqParams p;
      p.dim = c.layout.head_dim;
      p.stages = c.value_stages;
      p.bits = c.value_bits;
      p.seed = seed + 100 + l;
      p.training.kmeans_iterations = 2;
      const std::vector<float> x = testing::KeyLikeVectors(200, p.dim, p.seed);
      ResidualQuantizer q;
      EXPECT_TRUE(q.Fit(p, x.data(), 200).ok());
      EXPECT_TRUE(set->SetValue(l, s, std::move(q)).ok());
    }
  }
  return *std::move(set);
}

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + name;
}

TEST(CodebookSetTest, SerializeRoundTripIsBitExact) {
  for (KeySplit split : {KeySplit::kNone, KeySplit::kRopeHalfRotate}) {
    for (bool per_head : {false, true}) {
      const CodebookSet set = FittedSet(SmallConfig(split, per_head), 1);
      ASSERT_TRUE(set.complete());
      absl::StatusOr<std::string> bytes = set.Serialize();
      ASSERT_TRUE(bytes.ok()) << bytes.status();
      absl::StatusOr<CodebookSet> back = CodebookSet::Deserialize(*bytes);
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(back->config(), set.config());
      EXPECT_EQ(*back->Serialize(), *bytes);
      EXPECT_EQ(*back->Hash(), *set.Hash());
      EXPECT_EQ(back->key(1, per_head ? 1 : 0, 0).codebooks(),
                set.key(1, per_head ? 1 : 0, 0).codebooks());
      // The hash is the file's trailer.
      uint64_t trailer;
      std::memcpy(&trailer, bytes->data() + bytes->size() - 8, 8);
      EXPECT_EQ(trailer, *set.Hash());
    }
  }
}

TEST(CodebookSetTest, HashIsStableAndContentAddressed) {
  const CodebookConfig c = SmallConfig(KeySplit::kNone, false);
  const CodebookSet a = FittedSet(c, 1);
  const CodebookSet b = FittedSet(c, 1);
  const CodebookSet other = FittedSet(c, 2);
  EXPECT_EQ(*a.Hash(), *b.Hash());
  EXPECT_NE(*a.Hash(), *other.Hash());
  // Same codebooks, different config flag: different hash.
  CodebookConfig pre = c;
  pre.keys_post_rope = false;
  absl::StatusOr<std::string> bytes = a.Serialize();
  ASSERT_TRUE(bytes.ok());
  absl::StatusOr<CodebookSet> copy = CodebookSet::Deserialize(*bytes);
  ASSERT_TRUE(copy.ok());
  absl::StatusOr<CodebookSet> flipped = CodebookSet::Create(pre);
  ASSERT_TRUE(flipped.ok());
  for (int l = 0; l < 2; ++l) {
    ASSERT_TRUE(flipped->SetKey(l, 0, 0, copy->key(l, 0, 0)).ok());
    ASSERT_TRUE(flipped->SetValue(l, 0, copy->value(l, 0)).ok());
  }
  EXPECT_NE(*flipped->Hash(), *a.Hash());
}

TEST(CodebookSetTest, SaveAndLoad) {
  const CodebookSet set = FittedSet(SmallConfig(KeySplit::kNone, false), 3);
  const std::string path = TempPath("cb_save_load.vqcb");
  ASSERT_TRUE(set.Save(path).ok());
  absl::StatusOr<CodebookSet> back = CodebookSet::Load(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back->Hash(), *set.Hash());
  std::remove(path.c_str());
  EXPECT_EQ(CodebookSet::Load(path).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(CodebookSetTest, CorruptionIsDataLoss) {
  const std::string bytes =
      *FittedSet(SmallConfig(KeySplit::kRopeAdjacentPairs, false), 4)
           .Serialize();
  // A flipped bit anywhere: header, codebooks or trailer.
  for (size_t pos : {size_t{9}, size_t{20}, size_t{40}, size_t{64},
                     bytes.size() / 2, bytes.size() - 1}) {
    std::string bad = bytes;
    bad[pos] ^= 0x10;
    EXPECT_EQ(CodebookSet::Deserialize(bad).status().code(),
              absl::StatusCode::kDataLoss)
        << "flipped byte " << pos;
  }
  // Truncated at any length.
  for (size_t len : {size_t{0}, size_t{3}, size_t{50}, size_t{100},
                     bytes.size() - 8, bytes.size() - 1}) {
    EXPECT_EQ(CodebookSet::Deserialize(bytes.substr(0, len)).status().code(),
              absl::StatusCode::kDataLoss)
        << "length " << len;
  }
  // Trailing garbage.
  EXPECT_EQ(CodebookSet::Deserialize(bytes + "x").status().code(),
            absl::StatusCode::kDataLoss);
  // A corrupted file on disk.
  const std::string path = TempPath("cb_corrupt.vqcb");
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::string bad = bytes;
  bad[bytes.size() / 3] ^= 1;
  std::fwrite(bad.data(), 1, bad.size(), f);
  std::fclose(f);
  EXPECT_EQ(CodebookSet::Load(path).status().code(),
            absl::StatusCode::kDataLoss);
  std::remove(path.c_str());
}

TEST(CodebookSetTest, WrongMagicAndVersion) {
  std::string bytes =
      *FittedSet(SmallConfig(KeySplit::kNone, false), 5).Serialize();
  std::string magic = bytes;
  magic[0] = 'X';
  EXPECT_EQ(CodebookSet::Deserialize(magic).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::string version = bytes;
  version[4] = 2;
  EXPECT_EQ(CodebookSet::Deserialize(version).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(CodebookSetTest, IncompleteSetHasNoHash) {
  absl::StatusOr<CodebookSet> set =
      CodebookSet::Create(SmallConfig(KeySplit::kNone, false));
  ASSERT_TRUE(set.ok());
  EXPECT_FALSE(set->complete());
  EXPECT_EQ(set->Hash().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(set->Serialize().status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(CodebookSetTest, RejectsMismatchedQuantizers) {
  absl::StatusOr<CodebookSet> set =
      CodebookSet::Create(SmallConfig(KeySplit::kNone, false));
  ASSERT_TRUE(set.ok());
  RvqParams p;
  p.dim = 8;
  p.stages = 2;  // config wants 3 key stages
  p.bits = 4;
  const std::vector<float> x = testing::KeyLikeVectors(100, 8, 1);
  ResidualQuantizer q;
  ASSERT_TRUE(q.Fit(p, x.data(), 100).ok());
  EXPECT_EQ(set->SetKey(0, 0, 0, q).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(set->SetKey(5, 0, 0, q).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(set->SetValue(0, 0, ResidualQuantizer()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CodebookSetTest, InvalidConfigs) {
  CodebookConfig c = SmallConfig(KeySplit::kNone, false);
  c.key_bits = 17;
  EXPECT_EQ(CodebookSet::Create(c).status().code(),
            absl::StatusCode::kInvalidArgument);
  c = SmallConfig(KeySplit::kNone, false);
  c.value_stages = 0;
  EXPECT_EQ(CodebookSet::Create(c).status().code(),
            absl::StatusCode::kInvalidArgument);
  c = SmallConfig(KeySplit::kRopeHalfRotate, false);
  c.key_group_stages = {3};  // split needs two groups
  EXPECT_EQ(CodebookSet::Create(c).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv
