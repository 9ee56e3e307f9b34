#include "kernels/vq_decode_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/bitpack.h"
#include "kernels/rope.h"
#include "kernels/vq_encode_element.h"
#include "kernels/vq_layer_encode.h"
#include "tests/testing/random_vq_codec.h"

namespace vqkv {
namespace {

using testing::RandomVqCodec;
using testing::RandomVqCodecSpec;
using testing::RandomVqPayload;

// Every code of every width, read from a buffer of exactly PackedBytes
// bytes, so that reading past the last byte is an ASan error.
TEST(VqDecodePlanTest, UnpackCodeAtReadsEveryWidthWithinTheBuffer) {
  std::mt19937 rng(3);
  for (int bits = 1; bits <= 16; ++bits) {
    for (int64_t n : {1, 7, 8, 33, 200}) {
      std::vector<uint16_t> codes(n);
      for (uint16_t& c : codes) c = static_cast<uint16_t>(rng() % (1u << bits));
      std::vector<uint8_t> packed(PackedBytes(n, bits));
      ASSERT_TRUE(
          PackBits(codes.data(), n, bits, packed.data(), packed.size()).ok());
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(UnpackCodeAt(packed.data(), i, bits), codes[i])
            << bits << " bits, code " << i << " of " << n;
      }
    }
  }
}

struct Case {
  const char* name;
  RandomVqCodecSpec spec;
  std::optional<RopeSpec> rope;  // pre-RoPE codebooks: rotate on decode
  RopePairs engine_pairs;
};

std::vector<Case> Cases() {
  std::vector<Case> cases;
  RandomVqCodecSpec plain;
  plain.layers = 3;
  cases.push_back({"post-RoPE keys, no split, GGUF engine", plain, std::nullopt,
                   RopePairs::kAdjacent});
  cases.push_back({"post-RoPE keys, no split, Hugging Face engine", plain,
                   std::nullopt, RopePairs::kHalf});
  RandomVqCodecSpec split = plain;
  split.split = KeySplit::kRopeAdjacentPairs;
  split.per_head = true;
  split.key_gains = true;
  split.post_rope = false;
  cases.push_back({"pre-RoPE split per head with gains, GGUF engine", split,
                   RopeSpec{10000.0, 64, RopePairs::kAdjacent},
                   RopePairs::kAdjacent});
  cases.push_back({"pre-RoPE split per head with gains, Hugging Face engine",
                   split, RopeSpec{10000.0, 64, RopePairs::kAdjacent},
                   RopePairs::kHalf});
  RandomVqCodecSpec half = plain;
  half.split = KeySplit::kRopeHalfRotate;
  half.key_gains = true;
  half.post_rope = false;
  half.kv_heads = 3;
  // Partial rotary: the last 16 dimensions pass through.
  cases.push_back({"pre-RoPE half split, partial rotary, GGUF engine", half,
                   RopeSpec{500000.0, 48, RopePairs::kHalf},
                   RopePairs::kAdjacent});
  // Key refinements: of the middle layer, on the split per-head set; of the
  // first and last layers (so the second's codes sit one layer into the
  // refinement section), on the plain one.
  RandomVqCodecSpec refined_split = split;
  refined_split.refine_layers = {1};
  refined_split.refine_stages = 6;
  cases.push_back(
      {"pre-RoPE split per head with gains, key refinement of "
       "layer 1, Hugging Face engine",
       refined_split, RopeSpec{10000.0, 64, RopePairs::kAdjacent},
       RopePairs::kHalf});
  RandomVqCodecSpec refined_plain = plain;
  refined_plain.refine_layers = {0, 2};
  refined_plain.refine_stages = 5;
  cases.push_back({"post-RoPE keys, key refinement of layers 0 and 2",
                   refined_plain, std::nullopt, RopePairs::kAdjacent});
  return cases;
}

// The plan's element functions give what the client's CPU path gives:
// VqCodec::DecodeLayers for one layer, then Rope::ApplyBlock from the
// block's first position (pre-RoPE codebooks), then ReorderRopePairs into
// the engine's layout (CacheClient::DecodeVerifiedLayers). Values exactly;
// keys within float rounding of the angles.
TEST(VqDecodePlanTest, MatchesTheCpuDecodeRotationAndReorder) {
  constexpr int64_t kTokens = 32;
  constexpr int64_t kFirstPosition = 5 * kTokens;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    auto codec = RandomVqCodec(c.spec, 11);
    ASSERT_TRUE(codec.ok()) << codec.status();
    auto payload = RandomVqPayload(**codec, kTokens, 12);
    ASSERT_TRUE(payload.ok()) << payload.status();
    auto plan = MakeVqDecodePlan(**codec, c.rope, c.engine_pairs);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const VqDecodeView view = plan->view();
    const KvLayout& l = (*codec)->layout();
    const int64_t n = kTokens * l.kv_heads * l.head_dim;
    const RopePairs block_pairs = c.rope ? c.rope->pairs : RopePairs::kAdjacent;
    const int rot_dims = c.rope ? c.rope->rot_dims : l.head_dim;
    for (int layer = 0; layer < l.layers; ++layer) {
      std::vector<float> want_k(n), want_v(n);
      ASSERT_TRUE((*codec)
                      ->DecodeLayers(payload->data(), payload->size(), kTokens,
                                     layer, 1, want_k.data(), want_v.data())
                      .ok());
      if (c.rope) {
        Rope(l.head_dim, *c.rope)
            .ApplyBlock(want_k.data(), 1, kTokens, l.kv_heads, kFirstPosition);
      }
      ReorderRopePairs(want_k.data(), kTokens * l.kv_heads, l.head_dim,
                       rot_dims, block_pairs, c.engine_pairs);

      const VqDecodePlan::LayerSlices s = plan->Slices(kTokens, layer);
      ASSERT_LE(s.value_offset + s.value_bytes, payload->size());
      ASSERT_LE(s.refine_offset + s.refine_bytes, payload->size());
      const bool refined = (*codec)->codebooks().RefinedIndex(layer) >= 0;
      ASSERT_EQ(s.refine_bytes > 0, refined) << "layer " << layer;
      std::vector<CodedToken> rows(kTokens);
      for (int t = 0; t < kTokens; ++t) {
        rows[t] = {payload->data() + s.key_offset,
                   payload->data() + s.value_offset, t, kFirstPosition + t,
                   refined ? payload->data() + s.refine_offset : nullptr};
      }
      std::vector<float> got_k(n), got_v(n);
      VqDecodeTokensRef(view, layer, rows.data(), kTokens, got_k.data(),
                        got_v.data());
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(got_v[i], want_v[i]) << "layer " << layer << " value " << i;
        ASSERT_NEAR(got_k[i], want_k[i], 1e-5f * (1.0f + std::fabs(want_k[i])))
            << "layer " << layer << " key element " << i;
      }
    }
  }
}

// The encode reference (the device encode's arithmetic) against the
// client's CPU path: keys reordered into the blocks' pair order and
// un-rotated token by token (Rope::Invert), then VqCodec::Encode. Two
// blocks of different lengths in one batch; every layer slice (K, V and a
// refined layer's key refinement) byte for byte.
TEST(VqLayerEncodeTest, MatchesTheCpuReorderRotationAndEncode) {
  const int64_t kTokens[2] = {16, 32};
  const int64_t kFirstPosition[2] = {0, 7 * 32};
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    auto codec = RandomVqCodec(c.spec, 13);
    ASSERT_TRUE(codec.ok()) << codec.status();
    auto plan = MakeVqDecodePlan(**codec, c.rope, c.engine_pairs);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const KvLayout& l = (*codec)->layout();
    const int64_t row = int64_t{l.kv_heads} * l.head_dim;
    const RopePairs block_pairs = c.rope ? c.rope->pairs : RopePairs::kAdjacent;
    const int rot_dims = c.rope ? c.rope->rot_dims : l.head_dim;
    std::mt19937 rng(9);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int layer = 0; layer < l.layers; ++layer) {
      std::vector<float> keys[2], values[2];
      std::vector<uint8_t> got_k[2], got_v[2], got_r[2];
      std::vector<LayerBlockToEncode> batch;
      const VqDecodePlan::LayerSlices s0 = plan->Slices(kTokens[0], layer);
      const VqDecodePlan::LayerSlices s1 = plan->Slices(kTokens[1], layer);
      const VqDecodePlan::LayerSlices* slices[2] = {&s0, &s1};
      for (int b = 0; b < 2; ++b) {
        keys[b].resize(kTokens[b] * row);
        values[b].resize(kTokens[b] * row);
        for (float& x : keys[b]) x = normal(rng);
        for (float& x : values[b]) x = normal(rng);
        got_k[b].assign(slices[b]->key_bytes, 0xee);
        got_v[b].assign(slices[b]->value_bytes, 0xee);
        got_r[b].assign(slices[b]->refine_bytes, 0xee);
        batch.push_back({keys[b].data(), values[b].data(), kTokens[b],
                         kFirstPosition[b], got_k[b].data(), got_v[b].data(),
                         got_r[b].data()});
      }
      if (s0.refine_bytes > 0) {
        // A refined layer needs somewhere to put the refinement.
        std::vector<LayerBlockToEncode> no_refine = batch;
        no_refine[1].refine_codes = nullptr;
        EXPECT_EQ(VqEncodeLayerRef(**codec, *plan, layer, no_refine).code(),
                  absl::StatusCode::kInvalidArgument);
      }
      ASSERT_TRUE(VqEncodeLayerRef(**codec, *plan, layer, batch).ok());
      for (int b = 0; b < 2; ++b) {
        // The CPU path: every layer of the block (this one placed at
        // `layer`, the others zero), prepared as the client prepares keys.
        std::vector<float> k(l.layers * kTokens[b] * row, 0.0f), v(k.size());
        float* kl = k.data() + layer * kTokens[b] * row;
        std::copy(keys[b].begin(), keys[b].end(), kl);
        std::copy(values[b].begin(), values[b].end(),
                  v.data() + layer * kTokens[b] * row);
        ReorderRopePairs(kl, kTokens[b] * l.kv_heads, l.head_dim, rot_dims,
                         c.engine_pairs, block_pairs);
        if (c.rope) {
          const Rope rope(l.head_dim, *c.rope);
          for (int64_t t = 0; t < kTokens[b]; ++t) {
            rope.Invert(kl + t * row, l.kv_heads, kFirstPosition[b] + t);
          }
        }
        std::vector<uint8_t> payload((*codec)->EncodedBytes(kTokens[b]));
        ASSERT_TRUE((*codec)
                        ->Encode(k.data(), v.data(), kTokens[b], payload.data(),
                                 payload.size())
                        .ok());
        const VqDecodePlan::LayerSlices& s = *slices[b];
        EXPECT_EQ(got_k[b], std::vector<uint8_t>(
                                payload.begin() + s.key_offset,
                                payload.begin() + s.key_offset + s.key_bytes))
            << "layer " << layer << " block " << b << " keys";
        EXPECT_EQ(got_v[b],
                  std::vector<uint8_t>(
                      payload.begin() + s.value_offset,
                      payload.begin() + s.value_offset + s.value_bytes))
            << "layer " << layer << " block " << b << " values";
        EXPECT_EQ(got_r[b],
                  std::vector<uint8_t>(
                      payload.begin() + s.refine_offset,
                      payload.begin() + s.refine_offset + s.refine_bytes))
            << "layer " << layer << " block " << b << " key refinement";
      }
    }
  }
}

// The encode's job j of a layer maps to the quantizer the codec uses for
// it: key jobs slot * groups + group, then the value jobs, per layer; and
// the plan's codebook pointers are those quantizers' codebooks.
TEST(VqDecodePlanTest, JobQuantizerIsTheCodecsQuantizer) {
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    auto codec = RandomVqCodec(c.spec, 17);
    ASSERT_TRUE(codec.ok()) << codec.status();
    auto plan = MakeVqDecodePlan(**codec, c.rope, c.engine_pairs);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const std::vector<const ResidualQuantizer*> q = PlanQuantizers(**codec);
    const CodebookSet& set = (*codec)->codebooks();
    const VqDecodeView w = plan->view();
    ASSERT_EQ(q.size(),
              plan->key_codebooks.size() + plan->value_codebooks.size());
    for (int layer = 0; layer < plan->layers; ++layer) {
      for (int j = 0; j < VqEncodeJobCount(w); ++j) {
        const int key_jobs = VqEncodeKeyJobs(w);
        const ResidualQuantizer* want =
            j < key_jobs ? &set.key(layer, j / w.key_groups, j % w.key_groups)
                         : &set.value(layer, j - key_jobs);
        const size_t i = plan->JobQuantizer(layer, j);
        ASSERT_LT(i, q.size());
        EXPECT_EQ(q[i], want) << "layer " << layer << " job " << j;
        const float* books =
            i < plan->key_codebooks.size()
                ? plan->key_codebooks[i]
                : plan->value_codebooks[i - plan->key_codebooks.size()];
        EXPECT_EQ(books, want->codebooks().data());
        EXPECT_EQ(VqEncodeJobStages(w, j), want->stages());
        EXPECT_EQ(VqEncodeJobDims(w, j), want->dim());
      }
    }
  }
}

TEST(VqDecodePlanTest, RefusesWhatItCannotExpress) {
  RandomVqCodecSpec sketched;
  sketched.sketch_bits = 64;
  auto codec = RandomVqCodec(sketched, 4);
  ASSERT_TRUE(codec.ok()) << codec.status();
  auto plan = MakeVqDecodePlan(**codec, std::nullopt, RopePairs::kAdjacent);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(plan.status().message().find("sketch"), std::string::npos);

  auto unfitted = VqCodec::Create(KvLayout{2, 2, 64}, VqConfig{});
  ASSERT_TRUE(unfitted.ok());
  EXPECT_EQ(MakeVqDecodePlan(**unfitted, std::nullopt, RopePairs::kAdjacent)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace vqkv
