#include "kernels/codebook_set.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/fitted_codebook_set.h"
#include "tests/unit/kernels/rvq_test_data.h"

// Header-only: the test computes file hashes independently of the library.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace vqkv {
namespace {

CodebookConfig SmallConfig(KeySplit split, bool per_head) {
  return testing::TinyCodebookConfig(split, per_head);
}

// A complete set with codebooks fitted on synthetic data.
CodebookSet FittedSet(const CodebookConfig& c, uint64_t seed) {
  absl::StatusOr<CodebookSet> set = testing::FitSyntheticCodebookSet(
      c, 200,
      {[seed](int l, int s, int) { return seed + l * 10 + s; },
       [seed](int l, int) { return seed + 100 + l; }});
  EXPECT_TRUE(set.ok()) << set.status();
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
  version[4] = kCodebookFormatVersion + 1;
  EXPECT_EQ(CodebookSet::Deserialize(version).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

ModelIdentity SmallModel(uint64_t fingerprint) {
  return ModelIdentity{.architecture = "llama",
                       .layout = KvLayout{2, 2, 8},
                       .fingerprint = fingerprint};
}

// Rewrites a file's trailing hash after its content was edited.
void Rehash(std::string* bytes) {
  const uint64_t h = XXH3_64bits(bytes->data(), bytes->size() - 8);
  std::memcpy(bytes->data() + bytes->size() - 8, &h, 8);
}

// One set, one encoding: a nonzero reserved field (or second group's stage
// count of a one-group set) with a valid hash is refused, or the same
// codebooks would load under a second content hash. Found by
// tests/fuzz/codebook_set_fuzzer.
TEST(CodebookSetTest, NonzeroReservedFieldIsDataLoss) {
  const std::string bytes =
      *FittedSet(SmallConfig(KeySplit::kNone, false), 5).Serialize();
  ASSERT_TRUE(CodebookSet::Deserialize(bytes).ok());
  for (size_t offset : {40, 44, 47, 56, 63}) {
    std::string edited = bytes;
    edited[offset] = 1;
    Rehash(&edited);
    EXPECT_EQ(CodebookSet::Deserialize(edited).status().code(),
              absl::StatusCode::kDataLoss)
        << "offset " << offset;
  }
}

// Key gains: version 3, the gains after the codebooks, identity optional;
// every head not set reads gain 1.
TEST(CodebookSetTest, KeyGainsRoundTripAsVersion3) {
  for (bool identity : {false, true}) {
    CodebookSet set =
        FittedSet(SmallConfig(KeySplit::kRopeHalfRotate, true), 9);
    if (identity) {
      ASSERT_TRUE(set.SetIdentity(SmallModel(42)).ok());
    }
    const std::string before = *set.Serialize();
    const uint64_t hash_before = *set.Hash();
    EXPECT_FALSE(set.has_key_gains());
    const std::vector<float> centre = {1, -2, 3, -4, 5, -6, 7, -8};
    ASSERT_TRUE(set.SetKeyGain(1, 0, 1.25f, centre).ok());
    ASSERT_TRUE(set.has_key_gains());
    EXPECT_EQ(set.key_gain(0, 0), 1.0f);
    EXPECT_EQ(set.key_gain(0, 1), 1.0f);
    EXPECT_EQ(set.key_gain(1, 1), 1.0f);
    EXPECT_EQ(set.key_gain(1, 0), 1.25f);
    EXPECT_EQ(
        std::vector<float>(set.key_centre(1, 0), set.key_centre(1, 0) + 8),
        centre);
    const std::string bytes = *set.Serialize();
    EXPECT_EQ(bytes[4], 3);
    EXPECT_EQ(static_cast<uint8_t>(bytes[6]), 128);
    // 2 layers x 2 heads x (gain + 8 centre floats).
    EXPECT_EQ(bytes.size(),
              before.size() + (identity ? 0 : 64) + 2 * 2 * 9 * 4);
    EXPECT_NE(*set.Hash(), hash_before);
    absl::StatusOr<CodebookSet> back = CodebookSet::Deserialize(bytes);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->identity().has_value(), identity);
    ASSERT_TRUE(back->has_key_gains());
    EXPECT_EQ(back->key_gain(1, 0), 1.25f);
    EXPECT_EQ(back->key_centre(1, 0)[3], -4.0f);
    EXPECT_EQ(*back->Serialize(), bytes);
    EXPECT_EQ(*back->Hash(), *set.Hash());
    back->ClearKeyGains();
    EXPECT_FALSE(back->has_key_gains());
    EXPECT_EQ(*back->Serialize(), before);
  }
}

TEST(CodebookSetTest, SetKeyGainChecksItsArguments) {
  CodebookSet set = FittedSet(SmallConfig(KeySplit::kNone, false), 10);
  const std::vector<float> centre(8, 0.5f);
  EXPECT_EQ(set.SetKeyGain(2, 0, 1.1f, centre).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(set.SetKeyGain(0, 2, 1.1f, centre).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(set.SetKeyGain(0, 0, 1.1f, std::vector<float>(7)).code(),
            absl::StatusCode::kInvalidArgument);
  for (float bad : {0.0f, -1.0f, kMaxKeyGain * 2, std::nanf("")}) {
    EXPECT_EQ(set.SetKeyGain(0, 0, bad, centre).code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  std::vector<float> inf = centre;
  inf[2] = INFINITY;
  EXPECT_EQ(set.SetKeyGain(0, 0, 1.1f, inf).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(set.has_key_gains());
}

// A version-3 file whose gain is out of range (hash rewritten to match) is
// refused as corrupt, as is a version-2 file claiming version 3's body.
TEST(CodebookSetTest, BadKeyGainInFileIsDataLoss) {
  CodebookSet set = FittedSet(SmallConfig(KeySplit::kNone, false), 11);
  ASSERT_TRUE(set.SetKeyGain(0, 1, 2.0f, std::vector<float>(8, 0.0f)).ok());
  const std::string bytes = *set.Serialize();
  // The last entry is (layer 1, head 1): gain at -8 - 9*4.
  std::string edited = bytes;
  const float nan = std::nanf("");
  std::memcpy(edited.data() + edited.size() - 8 - 9 * 4, &nan, 4);
  Rehash(&edited);
  EXPECT_EQ(CodebookSet::Deserialize(edited).status().code(),
            absl::StatusCode::kDataLoss);
  std::string v2 = bytes;
  v2[4] = 2;
  Rehash(&v2);
  EXPECT_EQ(CodebookSet::Deserialize(v2).status().code(),
            absl::StatusCode::kDataLoss);
}

CodebookConfig PreRopeConfig() {
  CodebookConfig c = SmallConfig(KeySplit::kRopeHalfRotate, true);
  c.keys_post_rope = false;
  return c;
}

// Key RoPE: version 4, the spec in header fields that are reserved in
// versions 1-3, gains and identity optional.
TEST(CodebookSetTest, KeyRopeRoundTripsAsVersion4) {
  const RopeSpec rope{500000.0, 6, RopePairs::kHalf};
  for (bool gains : {false, true}) {
    for (bool identity : {false, true}) {
      CodebookSet set = FittedSet(PreRopeConfig(), 12);
      if (identity) {
        ASSERT_TRUE(set.SetIdentity(SmallModel(7)).ok());
      }
      if (gains) {
        ASSERT_TRUE(set.SetKeyGain(0, 1, 1.5f, std::vector<float>(8)).ok());
      }
      const std::string before = *set.Serialize();
      const uint64_t hash_before = *set.Hash();
      ASSERT_TRUE(set.SetKeyRope(rope).ok());
      const std::string bytes = *set.Serialize();
      EXPECT_EQ(bytes[4], 4);
      EXPECT_EQ(static_cast<uint8_t>(bytes[6]), 128);
      EXPECT_EQ(static_cast<uint8_t>(bytes[44]), 6);
      double theta;
      std::memcpy(&theta, bytes.data() + 56, 8);
      EXPECT_EQ(theta, 500000.0);
      EXPECT_EQ(bytes[112], 1);
      EXPECT_EQ(bytes[113], gains ? 1 : 0);
      // The body is the earlier version's, after the 128-byte header.
      const size_t old_header = static_cast<uint8_t>(before[6]);
      EXPECT_EQ(bytes.substr(128, bytes.size() - 136),
                before.substr(old_header, before.size() - old_header - 8));
      EXPECT_NE(*set.Hash(), hash_before);
      absl::StatusOr<CodebookSet> back = CodebookSet::Deserialize(bytes);
      ASSERT_TRUE(back.ok()) << back.status();
      ASSERT_TRUE(back->key_rope().has_value());
      EXPECT_EQ(*back->key_rope(), rope);
      EXPECT_EQ(back->has_key_gains(), gains);
      EXPECT_EQ(back->identity().has_value(), identity);
      EXPECT_EQ(*back->Serialize(), bytes);
      EXPECT_EQ(*back->Hash(), *set.Hash());
    }
  }
}

TEST(CodebookSetTest, SetKeyRopeChecksItsArguments) {
  CodebookSet post = FittedSet(SmallConfig(KeySplit::kNone, false), 13);
  EXPECT_EQ(post.SetKeyRope(RopeSpec{10000.0, 8}).code(),
            absl::StatusCode::kFailedPrecondition);
  CodebookSet pre = FittedSet(PreRopeConfig(), 13);
  EXPECT_EQ(pre.SetKeyRope(RopeSpec{10000.0, 10}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pre.SetKeyRope(RopeSpec{0.5, 8}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(pre.key_rope().has_value());
}

// Edits of a version-4 header, hash rewritten to match: every one is refused
// as corrupt, as are RoPE fields in a version-3 file.
TEST(CodebookSetTest, BadKeyRopeInFileIsDataLoss) {
  CodebookSet set = FittedSet(PreRopeConfig(), 14);
  ASSERT_TRUE(set.SetKeyGain(1, 1, 1.5f, std::vector<float>(8)).ok());
  const std::string v3 = *set.Serialize();
  ASSERT_EQ(v3[4], 3);
  ASSERT_TRUE(set.SetKeyRope(RopeSpec{10000.0, 8}).ok());
  const std::string v4 = *set.Serialize();
  ASSERT_TRUE(CodebookSet::Deserialize(v4).ok());
  auto edit = [](std::string bytes, size_t offset, uint8_t value) {
    bytes[offset] = static_cast<char>(value);
    Rehash(&bytes);
    return bytes;
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"odd rotary dims", edit(v4, 44, 7)},
      {"rotary dims past head_dim", edit(v4, 44, 10)},
      {"theta not finite", edit(edit(v4, 62, 0xf0), 63, 0x7f)},
      {"pair layout 2", edit(v4, 112, 2)},
      {"gains flag 2", edit(v4, 113, 2)},
      {"gains flag off with gains in the body", edit(v4, 113, 0)},
      {"reserved byte", edit(v4, 120, 1)},
      {"post-RoPE keys", edit(v4, 23, 1)},
      {"RoPE dims in version 3", edit(v3, 44, 8)},
  };
  for (const auto& [name, bytes] : cases) {
    EXPECT_EQ(CodebookSet::Deserialize(bytes).status().code(),
              absl::StatusCode::kDataLoss)
        << name;
  }
}

// A fitted quantizer for a key refinement of a SmallConfig set.
ResidualQuantizer RefinementQuantizer(int stages, uint64_t seed) {
  RvqParams p;
  p.dim = 8;
  p.stages = stages;
  p.bits = 4;
  p.seed = seed;
  p.training.kmeans_iterations = 2;
  const std::vector<float> x = testing::KeyLikeVectors(100, 8, seed);
  ResidualQuantizer q;
  EXPECT_TRUE(q.Fit(p, x.data(), 100).ok());
  return q;
}

// Key refinement: version 5, the refined layers and their quantizers after
// the gains; the RoPE fields optional.
TEST(CodebookSetTest, KeyRefinementRoundTripsAsVersion5) {
  for (bool per_head : {false, true}) {
    for (bool gains : {false, true}) {
      for (bool rope : {false, true}) {
        CodebookSet set =
            rope ? FittedSet(PreRopeConfig(), 21)
                 : FittedSet(SmallConfig(KeySplit::kNone, per_head), 21);
        if (rope) {
          ASSERT_TRUE(set.SetKeyRope(RopeSpec{10000.0, 8}).ok());
        }
        if (gains) {
          ASSERT_TRUE(set.SetKeyGain(1, 0, 1.2f, std::vector<float>(8)).ok());
        }
        const std::string before = *set.Serialize();
        const uint64_t hash_before = *set.Hash();
        EXPECT_FALSE(set.has_key_refinement());
        EXPECT_EQ(set.RefinedIndex(1), -1);
        const int slots = set.config().slots_per_layer();
        for (int s = 0; s < slots; ++s) {
          ASSERT_TRUE(
              set.SetKeyRefinement(1, s, RefinementQuantizer(2, 30 + s)).ok());
          // Complete only once every slot of the refined layer is set.
          EXPECT_EQ(set.complete(), s + 1 == slots);
        }
        EXPECT_EQ(set.refined_layers(), std::vector<int>{1});
        EXPECT_EQ(set.key_refine_stages(), 2);
        EXPECT_EQ(set.RefinedIndex(1), 0);
        const std::string bytes = *set.Serialize();
        EXPECT_EQ(bytes[4], 5);
        EXPECT_EQ(static_cast<uint8_t>(bytes[116]), 2);  // stages
        EXPECT_EQ(static_cast<uint8_t>(bytes[120]), 1);  // refined layers
        EXPECT_EQ(bytes[113], gains ? 1 : 0);
        EXPECT_EQ(static_cast<uint8_t>(bytes[44]), rope ? 8 : 0);
        // Body: the earlier one, then layer 1 (u32) and its quantizers.
        const size_t old_header = static_cast<uint8_t>(before[6]);
        const size_t old_body = before.size() - old_header - 8;
        EXPECT_EQ(bytes.size(),
                  128 + old_body + 4 + slots * 2 * 16 * 8 * 4 + 8);
        EXPECT_EQ(bytes.substr(128, old_body),
                  before.substr(old_header, old_body));
        EXPECT_EQ(static_cast<uint8_t>(bytes[128 + old_body]), 1);
        EXPECT_NE(*set.Hash(), hash_before);
        absl::StatusOr<CodebookSet> back = CodebookSet::Deserialize(bytes);
        ASSERT_TRUE(back.ok()) << back.status();
        EXPECT_EQ(back->refined_layers(), std::vector<int>{1});
        EXPECT_EQ(back->key_refine_stages(), 2);
        EXPECT_EQ(back->key_refinement(1, slots - 1).codebooks(),
                  set.key_refinement(1, slots - 1).codebooks());
        EXPECT_EQ(back->has_key_gains(), gains);
        EXPECT_EQ(back->key_rope().has_value(), rope);
        EXPECT_EQ(*back->Serialize(), bytes);
        EXPECT_EQ(*back->Hash(), *set.Hash());
        // Clearing it gives back the earlier file.
        set.ClearKeyRefinement();
        EXPECT_EQ(*set.Serialize(), before);
      }
    }
  }
}

TEST(CodebookSetTest, SetKeyRefinementChecksItsArguments) {
  CodebookSet set = FittedSet(SmallConfig(KeySplit::kNone, false), 22);
  EXPECT_EQ(set.SetKeyRefinement(2, 0, RefinementQuantizer(2, 1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(set.SetKeyRefinement(0, 1, RefinementQuantizer(2, 1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(set.SetKeyRefinement(0, 0, ResidualQuantizer()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(set.has_key_refinement());
  ASSERT_TRUE(set.SetKeyRefinement(1, 0, RefinementQuantizer(2, 1)).ok());
  // Every refinement has the first one's stages.
  EXPECT_EQ(set.SetKeyRefinement(0, 0, RefinementQuantizer(3, 1)).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(set.SetKeyRefinement(0, 0, RefinementQuantizer(2, 2)).ok());
  EXPECT_EQ(set.refined_layers(), (std::vector<int>{0, 1}));
  EXPECT_EQ(set.RefinedIndex(0), 0);
  EXPECT_EQ(set.RefinedIndex(1), 1);
}

// Edits of a version-5 file, hash rewritten to match: each is corrupt.
TEST(CodebookSetTest, BadKeyRefinementInFileIsDataLoss) {
  CodebookSet set = FittedSet(SmallConfig(KeySplit::kNone, false), 23);
  ASSERT_TRUE(set.SetKeyRefinement(0, 0, RefinementQuantizer(2, 3)).ok());
  ASSERT_TRUE(set.SetKeyRefinement(1, 0, RefinementQuantizer(2, 4)).ok());
  const std::string v5 = *set.Serialize();
  ASSERT_TRUE(CodebookSet::Deserialize(v5).ok());
  const size_t layers_at =
      v5.size() - 8 - 2 * (2 * 16 * 8 * 4) - 2 * 4;  // the refined layers
  ASSERT_EQ(static_cast<uint8_t>(v5[layers_at + 4]), 1);
  auto edit = [](std::string bytes, size_t offset, uint8_t value) {
    bytes[offset] = static_cast<char>(value);
    Rehash(&bytes);
    return bytes;
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"0 stages", edit(v5, 116, 0)},
      {"stages disagree with the body", edit(v5, 116, 3)},
      {"0 refined layers", edit(v5, 120, 0)},
      {"more refined layers than layers", edit(v5, 120, 3)},
      {"layers not ascending", edit(v5, layers_at + 4, 0)},
      {"layer out of range", edit(v5, layers_at + 4, 2)},
      {"reserved byte", edit(v5, 124, 1)},
      {"RoPE on post-RoPE keys", edit(v5, 44, 8)},
  };
  for (const auto& [name, bytes] : cases) {
    EXPECT_EQ(CodebookSet::Deserialize(bytes).status().code(),
              absl::StatusCode::kDataLoss)
        << name;
  }
}

TEST(CodebookSetTest, IdentityRoundTripWritesVersion2) {
  CodebookSet set = FittedSet(SmallConfig(KeySplit::kRopeHalfRotate, true), 7);
  const std::string v1 = *set.Serialize();
  ASSERT_TRUE(set.SetIdentity(SmallModel(0x0123456789abcdefULL)).ok());
  const std::string v2 = *set.Serialize();
  EXPECT_EQ(v2[4], 2);
  EXPECT_EQ(static_cast<uint8_t>(v2[6]), 128);
  EXPECT_EQ(v2.size(), v1.size() + 64);
  // The body is the same bytes, after the longer header.
  EXPECT_EQ(v2.substr(128, v2.size() - 136), v1.substr(64, v1.size() - 72));
  absl::StatusOr<CodebookSet> back = CodebookSet::Deserialize(v2);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->identity().has_value());
  EXPECT_EQ(*back->identity(), SmallModel(0x0123456789abcdefULL));
  EXPECT_EQ(*back->Serialize(), v2);
  EXPECT_EQ(*back->Hash(), *set.Hash());
}

TEST(CodebookSetTest, NoIdentityWritesVersion1) {
  const CodebookSet set = FittedSet(SmallConfig(KeySplit::kNone, false), 8);
  EXPECT_FALSE(set.identity().has_value());
  const std::string bytes = *set.Serialize();
  EXPECT_EQ(bytes[4], 1);
  EXPECT_EQ(static_cast<uint8_t>(bytes[6]), 64);
  absl::StatusOr<CodebookSet> back = CodebookSet::Deserialize(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_FALSE(back->identity().has_value());
}

// A version-1 file written byte by byte from docs/CODEBOOK_FORMAT.md: one
// layer, one KV head, D = 2, no key split, one 1-bit key stage and one
// 1-bit value stage.
TEST(CodebookSetTest, HandWrittenVersion1FileLoads) {
  std::string f(64, '\0');
  auto put32 = [&f](size_t off, uint32_t v) { std::memcpy(&f[off], &v, 4); };
  put32(0, 0x42435156);
  f[4] = 1;      // version
  f[6] = 64;     // header_bytes
  put32(8, 1);   // layers
  put32(12, 1);  // kv_heads
  put32(16, 2);  // head_dim
  f[20] = 0;     // key_split none
  f[21] = 1;     // key_groups
  f[22] = 0;     // per_head
  f[23] = 0;     // keys pre-RoPE
  put32(24, 1);  // key_bits
  put32(28, 1);  // value_stages
  put32(32, 1);  // value_bits
  put32(36, 1);  // key_stages[0]
  const uint64_t body = 4 * (1 * 2 * 2 + 1 * 2 * 2);
  std::memcpy(&f[48], &body, 8);
  const float cb[8] = {1, 2, 3, 4, -1, -2, -3, -4};
  f.append(reinterpret_cast<const char*>(cb), sizeof(cb));
  f.append(8, '\0');
  Rehash(&f);
  absl::StatusOr<CodebookSet> set = CodebookSet::Deserialize(f);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_FALSE(set->identity().has_value());
  EXPECT_FALSE(set->config().keys_post_rope);
  EXPECT_EQ(set->key(0, 0, 0).codebooks(), std::vector<float>({1, 2, 3, 4}));
  EXPECT_EQ(set->value(0, 0).codebooks(), std::vector<float>({-1, -2, -3, -4}));
  // Unknown identity: any model passes the identity check.
  EXPECT_TRUE(set->CheckModel(SmallModel(1), "codebooks c.vqcb").ok());
  // Re-serialized as version 1, byte for byte.
  EXPECT_EQ(*set->Serialize(), f);
}

TEST(CodebookSetTest, HashCoversIdentity) {
  CodebookSet a = FittedSet(SmallConfig(KeySplit::kNone, false), 9);
  CodebookSet b = a;
  CodebookSet c = a;
  CodebookSet d = a;
  ASSERT_TRUE(b.SetIdentity(SmallModel(1)).ok());
  ASSERT_TRUE(c.SetIdentity(SmallModel(2)).ok());
  ModelIdentity other = SmallModel(1);
  other.architecture = "qwen2";
  ASSERT_TRUE(d.SetIdentity(other).ok());
  const uint64_t ha = *a.Hash(), hb = *b.Hash(), hc = *c.Hash(), hd = *d.Hash();
  EXPECT_NE(ha, hb);
  EXPECT_NE(hb, hc);
  EXPECT_NE(hb, hd);
  EXPECT_NE(ha, hd);
}

TEST(CodebookSetTest, SetIdentityChecksIt) {
  CodebookSet set = FittedSet(SmallConfig(KeySplit::kNone, false), 10);
  ModelIdentity id = SmallModel(1);
  id.layout.layers = 3;
  EXPECT_EQ(set.SetIdentity(id).code(), absl::StatusCode::kInvalidArgument);
  id = SmallModel(1);
  id.architecture = "";
  EXPECT_EQ(set.SetIdentity(id).code(), absl::StatusCode::kInvalidArgument);
  id.architecture = "has space";
  EXPECT_EQ(set.SetIdentity(id).code(), absl::StatusCode::kInvalidArgument);
  id.architecture = std::string(33, 'a');
  EXPECT_EQ(set.SetIdentity(id).code(), absl::StatusCode::kInvalidArgument);
  id.architecture = std::string(32, 'a');
  EXPECT_TRUE(set.SetIdentity(id).ok());
  absl::StatusOr<CodebookSet> back = CodebookSet::Deserialize(*set.Serialize());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->identity()->architecture, std::string(32, 'a'));
}

TEST(CodebookSetTest, CheckModelNamesBothModels) {
  CodebookSet set = FittedSet(SmallConfig(KeySplit::kNone, false), 11);
  ASSERT_TRUE(set.SetIdentity(SmallModel(0x0123456789abcdefULL)).ok());
  EXPECT_TRUE(
      set.CheckModel(SmallModel(0x0123456789abcdefULL), "codebooks x").ok());
  ModelIdentity other = SmallModel(0xfedcba9876543210ULL);
  other.layout = KvLayout{30, 3, 64};
  const absl::Status s = set.CheckModel(other, "codebooks models/x.vqcb");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            "codebooks models/x.vqcb were fitted for llama 2x2x8 model "
            "fingerprint 0123456789abcdef, keys post-RoPE; this model is "
            "llama 30x3x64 model fingerprint fedcba9876543210");
}

TEST(CodebookSetTest, CorruptIdentityIsDataLoss) {
  CodebookSet set = FittedSet(SmallConfig(KeySplit::kNone, false), 12);
  ASSERT_TRUE(set.SetIdentity(SmallModel(5)).ok());
  const std::string bytes = *set.Serialize();
  {
    std::string bad = bytes;
    bad[72] = 33;  // architecture longer than 32 bytes
    Rehash(&bad);
    EXPECT_EQ(CodebookSet::Deserialize(bad).status().code(),
              absl::StatusCode::kDataLoss);
  }
  for (size_t at : {73, 80 + 5, 120}) {  // reserved, name padding, reserved
    std::string bad = bytes;
    bad[at] = 'x';
    Rehash(&bad);
    EXPECT_EQ(CodebookSet::Deserialize(bad).status().code(),
              absl::StatusCode::kDataLoss)
        << "byte " << at;
  }
  {
    std::string bad = bytes;
    bad[80] = ' ';  // not printable-without-space
    Rehash(&bad);
    EXPECT_EQ(CodebookSet::Deserialize(bad).status().code(),
              absl::StatusCode::kDataLoss);
  }
  {
    std::string bad = bytes;
    bad[6] = 64;  // a version-2 file must have the 128-byte header
    Rehash(&bad);
    EXPECT_EQ(CodebookSet::Deserialize(bad).status().code(),
              absl::StatusCode::kDataLoss);
  }
  // A version-2 file cut to its header's first 100 bytes.
  EXPECT_EQ(CodebookSet::Deserialize(bytes.substr(0, 100)).status().code(),
            absl::StatusCode::kDataLoss);
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
