#include "kernels/vq_codec.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/bitpack.h"
#include "kernels/block.h"
#include "kernels/code_attention.h"
#include "kernels/rvq.h"
#include "kernels/vq_decode_plan.h"
#include "tests/unit/kernels/rvq_test_data.h"

namespace vqkv {
namespace {

TEST(VqRateTest, PaperConfigurations) {
  // D = 128: keys 56 x 10 bits, values 16 x 9 bits.
  VqRate r = ComputeVqRate(56, 10, 16, 9, 128);
  EXPECT_EQ(r.key_bits_per_element, 4.375);
  EXPECT_EQ(r.value_bits_per_element, 1.125);
  EXPECT_EQ(r.bits_per_element, 2.75);
  EXPECT_EQ(r.compression_ratio, 0.828125);
  // D = 64: keys 28 x 10 bits, values 8 x 9 bits: the same rate.
  r = ComputeVqRate(28, 10, 8, 9, 64);
  EXPECT_EQ(r.bits_per_element, 2.75);
  EXPECT_EQ(r.compression_ratio, 0.828125);
}

TEST(VqCodecTest, DefaultsAreThePaperRate) {
  for (int D : {64, 128}) {
    absl::StatusOr<std::unique_ptr<VqCodec>> codec =
        VqCodec::Create(KvLayout{32, 8, D}, VqConfig{});
    ASSERT_TRUE(codec.ok()) << codec.status();
    const CodebookConfig& c = (*codec)->codebooks().config();
    EXPECT_EQ(c.key_stages(), D * 56 / 128);
    EXPECT_EQ(c.key_bits, 10);
    EXPECT_EQ(c.value_stages, D * 16 / 128);
    EXPECT_EQ(c.value_bits, 9);
    EXPECT_EQ((*codec)->KeyBitsPerElement(), 4.375);
    EXPECT_EQ((*codec)->ValueBitsPerElement(), 1.125);
    EXPECT_EQ((*codec)->BitsPerElement(), 2.75);
    EXPECT_EQ((*codec)->CompressionRatio(), 0.828125);
    // Payload: 2.75 bits/element exactly, over K and V.
    EXPECT_EQ((*codec)->EncodedBytes(16),
              PackedBytes(int64_t{32} * 16 * 8 * (D * 56 / 128), 10) +
                  PackedBytes(int64_t{32} * 16 * 8 * (D * 16 / 128), 9));
    EXPECT_EQ((*codec)->EncodedBytes(16) * 8,
              static_cast<size_t>(2.75 * 2 * 32 * 16 * 8 * D));
  }
}

TEST(VqCodecTest, SplitKeepsTheRate) {
  VqConfig cfg;
  cfg.key_split = KeySplit::kRopeHalfRotate;
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      VqCodec::Create(KvLayout{1, 1, 64}, cfg);
  ASSERT_TRUE(codec.ok());
  EXPECT_EQ((*codec)->codebooks().config().key_group_stages,
            (std::vector<int>{14, 14}));
  EXPECT_EQ((*codec)->BitsPerElement(), 2.75);
  cfg.key_group_stages[0] = 20;
  cfg.key_group_stages[1] = 8;
  codec = VqCodec::Create(KvLayout{1, 1, 64}, cfg);
  ASSERT_TRUE(codec.ok());
  EXPECT_EQ((*codec)->codebooks().config().key_group_stages,
            (std::vector<int>{20, 8}));
}

TEST(VqCodecTest, RejectsImpossibleConfigs) {
  VqConfig cfg;
  cfg.key_bits = 17;
  EXPECT_EQ(VqCodec::Create(KvLayout{1, 1, 64}, cfg).status().code(),
            absl::StatusCode::kInvalidArgument);
  cfg = VqConfig{};
  cfg.value_bits = 0;
  EXPECT_EQ(VqCodec::Create(KvLayout{1, 1, 64}, cfg).status().code(),
            absl::StatusCode::kInvalidArgument);
  cfg = VqConfig{};
  cfg.key_stages = -1;
  EXPECT_EQ(VqCodec::Create(KvLayout{1, 1, 64}, cfg).status().code(),
            absl::StatusCode::kInvalidArgument);
  // head_dim 2: the default rate rounds to 0 stages.
  EXPECT_EQ(VqCodec::Create(KvLayout{1, 1, 2}, VqConfig{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(VqCodec::Create(KvLayout{0, 1, 64}, VqConfig{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  cfg = VqConfig{};
  cfg.key_split = KeySplit::kRopeHalfRotate;
  EXPECT_EQ(VqCodec::Create(KvLayout{1, 1, 66}, cfg).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A small codec fitted on synthetic data: L=2, H=2, D=16 unless given.
struct Fixture {
  KvLayout layout{2, 2, 16};
  int64_t tokens = 600;
  std::vector<float> keys, values;
  std::unique_ptr<VqCodec> codec;

  explicit Fixture(VqConfig cfg, KvLayout l = KvLayout{2, 2, 16}) : layout(l) {
    const int64_t n = tokens * layout.layers * layout.kv_heads;
    keys = testing::KeyLikeVectors(n, layout.head_dim, 1);
    testing::ApplyRope(keys, layout.head_dim, testing::RopeLayout::kHalfRotate);
    values = testing::KeyLikeVectors(n, layout.head_dim, 2);
    absl::StatusOr<std::unique_ptr<VqCodec>> c = VqCodec::Create(layout, cfg);
    EXPECT_TRUE(c.ok()) << c.status();
    codec = *std::move(c);
  }
};

VqConfig SmallConfig() {
  VqConfig cfg;
  cfg.key_stages = 4;
  cfg.key_bits = 6;
  cfg.value_stages = 3;
  cfg.value_bits = 5;
  cfg.training.kmeans_iterations = 4;
  return cfg;
}

TEST(VqCodecTest, EncodeDecodeRoundTrip) {
  for (KeySplit split : {KeySplit::kNone, KeySplit::kRopeHalfRotate}) {
    for (bool per_head : {false, true}) {
      VqConfig cfg = SmallConfig();
      cfg.key_split = split;
      cfg.per_head = per_head;
      Fixture f(cfg);
      ASSERT_FALSE(f.codec->fitted());
      ASSERT_TRUE(
          f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, {}).ok());
      ASSERT_TRUE(f.codec->fitted());
      EXPECT_NE(f.codec->codebook_hash(), 0u);
      // Encode a fresh slice of 50 tokens.
      const int64_t T = 50;
      const int64_t n = T * 2 * 2;
      std::vector<float> k = testing::KeyLikeVectors(n, 16, 11);
      testing::ApplyRope(k, 16, testing::RopeLayout::kHalfRotate);
      std::vector<float> v = testing::KeyLikeVectors(n, 16, 12);
      std::vector<uint8_t> payload(f.codec->EncodedBytes(T));
      ASSERT_TRUE(
          f.codec->Encode(k.data(), v.data(), T, payload.data(), payload.size())
              .ok());
      std::vector<float> k2(k.size()), v2(v.size());
      ASSERT_TRUE(
          f.codec
              ->Decode(payload.data(), payload.size(), T, k2.data(), v2.data())
              .ok());
      const double ke = RelativeMse(k.data(), k2.data(), n, 16);
      const double ve = RelativeMse(v.data(), v2.data(), n, 16);
      // 4 x 6-bit key stages, 3 x 5-bit value stages on 16 dims: far from
      // lossless, but far below the error of coding nothing (1.0).
      EXPECT_LT(ke, 0.2) << KeySplitName(split) << " per_head " << per_head;
      EXPECT_LT(ve, 0.3) << KeySplitName(split) << " per_head " << per_head;
      std::printf("split %s per_head %d: key rel MSE %.4f, value %.4f\n",
                  KeySplitName(split), per_head, ke, ve);
      // Decoding is deterministic and matches the per-quantizer path: the
      // first key of token 0, layer 0, head 0 (no split, shared codebooks).
      if (split == KeySplit::kNone && !per_head) {
        std::vector<uint16_t> codes(4);
        ASSERT_TRUE(
            UnpackBits(payload.data(), payload.size(), 4, 6, codes.data())
                .ok());
        std::vector<float> y(16);
        ASSERT_TRUE(f.codec->codebooks()
                        .key(0, 0, 0)
                        .Decode(codes.data(), 1, y.data())
                        .ok());
        for (int d = 0; d < 16; ++d) EXPECT_EQ(y[d], k2[d]);
      }
    }
  }
}

// DecodeLayers is Decode restricted to a layer range, bit for bit: on the
// fast path (the range starts on a byte of both code sections: 16 tokens)
// and on the fallback (5 tokens: 15-bit value codes leave layer 1 mid-byte),
// with split keys, per-head codebooks and the key sketch.
TEST(VqCodecTest, DecodeLayersIsTheSliceOfDecode) {
  const KvLayout layout{4, 2, 16};
  for (KeySplit split : {KeySplit::kNone, KeySplit::kRopeHalfRotate}) {
    for (bool per_head : {false, true}) {
      for (auto [sketch_bits, sketch_from, refine] :
           {std::tuple{0, 0, false}, std::tuple{32, 0, false},
            std::tuple{32, 2, false}, std::tuple{0, 0, true},
            std::tuple{32, 2, true}}) {
        VqConfig cfg = SmallConfig();
        cfg.key_split = split;
        cfg.per_head = per_head;
        cfg.key_sketch_bits = sketch_bits;
        cfg.key_sketch_first_layer = sketch_from;
        Fixture f(cfg, layout);
        ASSERT_TRUE(
            f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, {}).ok());
        // Refined layers 1 and 3: with 5 tokens the second one's codes start
        // mid-byte (30 codes of 6 bits), so DecodeLayers takes its fallback.
        const int64_t layer_floats =
            f.tokens * layout.kv_heads * layout.head_dim;
        for (int l : {1, 3}) {
          if (!refine) break;
          ASSERT_TRUE(f.codec
                          ->FitKeyRefinement(l,
                                             f.keys.data() + l * layer_floats,
                                             f.tokens, 3, {})
                          .ok());
        }
        for (int64_t T : {16, 5}) {
          const int64_t n = T * layout.layers * layout.kv_heads;
          const int64_t per_layer = T * layout.kv_heads * layout.head_dim;
          std::vector<float> k = testing::KeyLikeVectors(n, 16, 31);
          std::vector<float> v = testing::KeyLikeVectors(n, 16, 32);
          std::vector<uint8_t> payload(f.codec->EncodedBytes(T));
          ASSERT_TRUE(f.codec
                          ->Encode(k.data(), v.data(), T, payload.data(),
                                   payload.size())
                          .ok());
          std::vector<float> k_all(k.size()), v_all(v.size());
          ASSERT_TRUE(f.codec
                          ->Decode(payload.data(), payload.size(), T,
                                   k_all.data(), v_all.data())
                          .ok());
          for (int first = 0; first < layout.layers; ++first) {
            for (int num = 1; first + num <= layout.layers; ++num) {
              std::vector<float> kr(per_layer * num), vr(kr.size());
              ASSERT_TRUE(f.codec
                              ->DecodeLayers(payload.data(), payload.size(), T,
                                             first, num, kr.data(), vr.data())
                              .ok());
              const std::string where = absl::StrCat(
                  KeySplitName(split), " per_head ", per_head, " refine ",
                  refine, " sketch ", sketch_bits, "@", sketch_from, " tokens ",
                  T, " layers ", first, "+", num);
              ASSERT_EQ(kr, std::vector<float>(
                                k_all.begin() + first * per_layer,
                                k_all.begin() + (first + num) * per_layer))
                  << where;
              ASSERT_EQ(vr, std::vector<float>(
                                v_all.begin() + first * per_layer,
                                v_all.begin() + (first + num) * per_layer))
                  << where;
            }
          }
          std::vector<float> kr(per_layer * 2), vr(kr.size());
          for (auto [first, num] : {std::pair{-1, 1}, std::pair{0, 0},
                                    std::pair{3, 2}, std::pair{4, 1}}) {
            EXPECT_EQ(f.codec
                          ->DecodeLayers(payload.data(), payload.size(), T,
                                         first, num, kr.data(), vr.data())
                          .code(),
                      absl::StatusCode::kInvalidArgument)
                << first << "+" << num;
          }
        }
      }
    }
  }
}

TEST(VqCodecTest, FitLayerByLayerEqualsFit) {
  Fixture a(SmallConfig()), b(SmallConfig());
  ASSERT_TRUE(a.codec->Fit(a.keys.data(), a.values.data(), a.tokens, {}).ok());
  const int64_t per_layer = a.tokens * 2 * 16;
  ASSERT_TRUE(b.codec
                  ->FitLayer(1, b.keys.data() + per_layer,
                             b.values.data() + per_layer, b.tokens, {})
                  .ok());
  EXPECT_FALSE(b.codec->fitted());
  std::vector<uint8_t> out(b.codec->EncodedBytes(1));
  EXPECT_EQ(
      b.codec->Encode(b.keys.data(), b.values.data(), 1, out.data(), out.size())
          .code(),
      absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(
      b.codec->FitLayer(0, b.keys.data(), b.values.data(), b.tokens, {}).ok());
  EXPECT_TRUE(b.codec->fitted());
  EXPECT_EQ(a.codec->codebook_hash(), b.codec->codebook_hash());
  EXPECT_EQ(a.codec->Descriptor(), b.codec->Descriptor());
}

TEST(VqCodecTest, ProgressCoversAllStages) {
  Fixture f(SmallConfig());
  int64_t last = 0, total = 0, calls = 0;
  FitOptions opt;
  opt.progress = [&](const FitProgress& p) {
    EXPECT_GT(p.done, last) << p.phase;
    last = p.done;
    total = p.total;
    ++calls;
  };
  ASSERT_TRUE(f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, opt).ok());
  EXPECT_EQ(calls, 2 * (4 + 3));
  EXPECT_EQ(last, total);
}

TEST(VqCodecTest, BadSizesAndUnfitted) {
  Fixture f(SmallConfig());
  std::vector<uint8_t> out(f.codec->EncodedBytes(4));
  std::vector<float> k(4 * 2 * 2 * 16), v(k.size());
  EXPECT_EQ(
      f.codec->Encode(k.data(), v.data(), 4, out.data(), out.size()).code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      f.codec->Decode(out.data(), out.size(), 4, k.data(), v.data()).code(),
      absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, {}).ok());
  EXPECT_EQ(
      f.codec->Encode(k.data(), v.data(), 4, out.data(), out.size() - 1).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      f.codec->Encode(k.data(), v.data(), 0, out.data(), out.size()).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      f.codec->Encode(nullptr, v.data(), 4, out.data(), out.size()).code(),
      absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(
      f.codec->Encode(k.data(), v.data(), 4, out.data(), out.size()).ok());
  EXPECT_EQ(
      f.codec->Decode(out.data(), out.size() - 1, 4, k.data(), v.data()).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      f.codec->Decode(out.data(), out.size(), 3, k.data(), v.data()).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.codec->FitLayer(2, f.keys.data(), f.values.data(), 10, {}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(VqCodecTest, FromSavedCodebookSet) {
  VqConfig cfg = SmallConfig();
  cfg.key_split = KeySplit::kRopeHalfRotate;
  cfg.keys_post_rope = false;
  Fixture f(cfg);
  ASSERT_TRUE(f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, {}).ok());
  const std::string path = ::testing::TempDir() + "/vq_codec_set.vqcb";
  ASSERT_TRUE(f.codec->codebooks().Save(path).ok());
  absl::StatusOr<CodebookSet> set = CodebookSet::Load(path);
  std::remove(path.c_str());
  ASSERT_TRUE(set.ok()) << set.status();
  absl::StatusOr<std::unique_ptr<VqCodec>> loaded =
      VqCodec::FromCodebookSet(*std::move(set), 4);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->codebook_hash(), f.codec->codebook_hash());
  EXPECT_EQ((*loaded)->Descriptor(), f.codec->Descriptor());
  EXPECT_NE(f.codec->Descriptor().find("split=rope_half_rotate"),
            std::string::npos);
  EXPECT_NE(f.codec->Descriptor().find("rope=pre"), std::string::npos);
  EXPECT_EQ((*loaded)->config().beam_width, 4);
  // Beam-coded payloads decode with the greedy codec's codebooks, no worse.
  const int64_t T = 40, n = T * 4;
  std::vector<uint8_t> g(f.codec->EncodedBytes(T)), b(g.size());
  ASSERT_TRUE(
      f.codec->Encode(f.keys.data(), f.values.data(), T, g.data(), g.size())
          .ok());
  ASSERT_TRUE(
      (*loaded)
          ->Encode(f.keys.data(), f.values.data(), T, b.data(), b.size())
          .ok());
  std::vector<float> kg(n * 16), vg(n * 16), kb(n * 16), vb(n * 16);
  ASSERT_TRUE(
      f.codec->Decode(g.data(), g.size(), T, kg.data(), vg.data()).ok());
  ASSERT_TRUE(
      f.codec->Decode(b.data(), b.size(), T, kb.data(), vb.data()).ok());
  // keys of layer 0 are the first n vectors
  EXPECT_LE(RelativeMse(f.keys.data(), kb.data(), n, 16),
            RelativeMse(f.keys.data(), kg.data(), n, 16) * 1.001);
  CodebookSet empty = *CodebookSet::Create(f.codec->codebooks().config());
  EXPECT_EQ(VqCodec::FromCodebookSet(std::move(empty)).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// The payload layout of vq_codec.h, checked against each quantizer encoding
// its own vectors: K codes [layer][token][kv_head][group][stage], then V
// codes [layer][token][kv_head][stage].
TEST(VqCodecTest, PayloadLayoutIsTheDocumentedOne) {
  for (bool per_head : {false, true}) {
    SCOPED_TRACE(per_head ? "per head" : "shared");
    const int L = 2, H = 2, D = 8, T = 3;
    VqConfig cfg;
    cfg.key_split = KeySplit::kRopeHalfRotate;
    cfg.key_stages = 4;
    cfg.key_group_stages[0] = 3;
    cfg.key_group_stages[1] = 1;
    cfg.key_bits = 3;
    cfg.value_stages = 2;
    cfg.value_bits = 5;
    cfg.per_head = per_head;
    auto codec = VqCodec::Create(KvLayout{L, H, D}, cfg);
    ASSERT_TRUE(codec.ok()) << codec.status();
    std::vector<float> fit_k(64 * L * H * D), fit_v(fit_k.size());
    for (size_t i = 0; i < fit_k.size(); ++i) {
      fit_k[i] = std::sin(0.37f * static_cast<float>(i));
      fit_v[i] = std::cos(0.11f * static_cast<float>(i * i % 97));
    }
    ASSERT_TRUE((*codec)->Fit(fit_k.data(), fit_v.data(), 64, {}).ok());
    const std::vector<float> k(fit_k.begin() + 5 * L * H * D,
                               fit_k.begin() + (5 + T) * L * H * D);
    const std::vector<float> v(fit_v.begin() + 9 * L * H * D,
                               fit_v.begin() + (9 + T) * L * H * D);
    std::vector<uint8_t> payload((*codec)->EncodedBytes(T));
    ASSERT_TRUE(
        (*codec)
            ->Encode(k.data(), v.data(), T, payload.data(), payload.size())
            .ok());

    const CodebookSet& set = (*codec)->codebooks();
    const int Nk = 4, Nv = 2;
    const int64_t vectors = int64_t{L} * T * H;
    std::vector<uint16_t> kc(vectors * Nk), vc(vectors * Nv);
    const size_t kbytes = PackedBytes(vectors * Nk, 3);
    ASSERT_TRUE(
        UnpackBits(payload.data(), kbytes, vectors * Nk, 3, kc.data()).ok());
    ASSERT_TRUE(UnpackBits(payload.data() + kbytes, payload.size() - kbytes,
                           vectors * Nv, 5, vc.data())
                    .ok());
    for (int l = 0; l < L; ++l) {
      for (int t = 0; t < T; ++t) {
        for (int h = 0; h < H; ++h) {
          const int64_t vec = (int64_t{l} * T + t) * H + h;
          const float* kx = k.data() + vec * D;
          const int slot = per_head ? h : 0;
          std::vector<uint16_t> want;
          for (size_t g = 0; g < set.key_group_dims().size(); ++g) {
            const std::vector<int>& dims = set.key_group_dims()[g];
            std::vector<float> x;
            for (int d : dims) x.push_back(kx[d]);
            const ResidualQuantizer& q = set.key(l, slot, static_cast<int>(g));
            std::vector<uint16_t> c(q.stages());
            ASSERT_TRUE(q.Encode(x.data(), 1, c.data()).ok());
            want.insert(want.end(), c.begin(), c.end());
          }
          EXPECT_EQ(std::vector<uint16_t>(kc.begin() + vec * Nk,
                                          kc.begin() + (vec + 1) * Nk),
                    want)
              << "keys of layer " << l << " token " << t << " head " << h;
          std::vector<uint16_t> vwant(Nv);
          ASSERT_TRUE(set.value(l, slot)
                          .Encode(v.data() + vec * D, 1, vwant.data())
                          .ok());
          EXPECT_EQ(std::vector<uint16_t>(vc.begin() + vec * Nv,
                                          vc.begin() + (vec + 1) * Nv),
                    vwant)
              << "values of layer " << l << " token " << t << " head " << h;
        }
      }
    }
  }
}

}  // namespace
}  // namespace vqkv

namespace vqkv {
namespace {

// The key sketch (VqConfig::key_sketch_bits): its bytes follow the value
// codes, it is named in the descriptor, counted in the rate, and it restores
// what the codebooks cannot represent. Keys fitted with a zero last
// dimension and coded with a large one lose it entirely without the sketch
// and keep it, on average, with it.
TEST(VqCodecTest, KeySketchRestoresDirectionsTheCodebooksMiss) {
  VqConfig plain_cfg = SmallConfig();
  VqConfig sketch_cfg = plain_cfg;
  sketch_cfg.key_sketch_bits = 32;
  Fixture plain(plain_cfg), sketched(sketch_cfg);
  const int D = plain.layout.head_dim;
  for (Fixture* f : {&plain, &sketched}) {
    for (size_t i = D - 1; i < f->keys.size(); i += D) f->keys[i] = 0;
    ASSERT_TRUE(
        f->codec->Fit(f->keys.data(), f->values.data(), f->tokens, {}).ok());
  }
  const int64_t T = 40;
  const int64_t n = T * plain.layout.layers * plain.layout.kv_heads;
  EXPECT_EQ(sketched.codec->EncodedBytes(T),
            plain.codec->EncodedBytes(T) + n * (2 + 32 / 8));
  EXPECT_EQ(sketched.codec->KeyBitsPerElement(),
            plain.codec->KeyBitsPerElement() + (16.0 + 32) / D);
  EXPECT_EQ(sketched.codec->Descriptor(), plain.codec->Descriptor() + ":ks=32");
  EXPECT_FALSE(VqCodec::FromCodebookSet(plain.codec->codebooks(), 1, 12).ok());

  std::vector<float> k = testing::KeyLikeVectors(n, D, 21);
  std::vector<float> v = testing::KeyLikeVectors(n, D, 22);
  double rms = 0;
  for (int64_t i = 0; i < n; ++i) rms += double(k[i * D]) * k[i * D];
  rms = std::sqrt(rms / n);
  for (int64_t i = 0; i < n; ++i) k[i * D + D - 1] = static_cast<float>(rms);
  double recovered[2] = {0, 0};
  int which = 0;
  for (Fixture* f : {&plain, &sketched}) {
    std::vector<uint8_t> payload(f->codec->EncodedBytes(T));
    ASSERT_TRUE(
        f->codec->Encode(k.data(), v.data(), T, payload.data(), payload.size())
            .ok());
    std::vector<float> k2(k.size()), v2(v.size());
    ASSERT_TRUE(
        f->codec
            ->Decode(payload.data(), payload.size(), T, k2.data(), v2.data())
            .ok());
    for (int64_t i = 0; i < n; ++i) recovered[which] += k2[i * D + D - 1];
    recovered[which] /= n * rms;
    ++which;
  }
  // Blocks say whether they carry a sketch; a codec without one (or with
  // one where the block has none) refuses them.
  absl::StatusOr<std::vector<uint8_t>> block =
      EncodeBlock(*sketched.codec, k.data(), v.data(), T, {});
  ASSERT_TRUE(block.ok()) << block.status();
  absl::StatusOr<BlockHeader> h = VerifyBlock(block->data(), block->size());
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->flags & kBlockHasKeySketch);
  std::vector<float> bk(k.size()), bv(v.size());
  EXPECT_TRUE(DecodeBlock(*sketched.codec, block->data(), block->size(), T,
                          bk.data(), bv.data())
                  .ok());
  absl::StatusOr<std::unique_ptr<VqCodec>> same_books =
      VqCodec::FromCodebookSet(sketched.codec->codebooks());
  ASSERT_TRUE(same_books.ok());
  EXPECT_EQ(DecodeBlock(**same_books, block->data(), block->size(), T,
                        bk.data(), bv.data())
                .code(),
            absl::StatusCode::kFailedPrecondition);

  EXPECT_LT(std::abs(recovered[0]), 0.1);  // the codebooks miss it
  EXPECT_GT(recovered[1], 0.6);            // the sketch brings it back
  EXPECT_LT(recovered[1], 1.4);
}

// The sketch on the later layers only (VqConfig::key_sketch_first_layer):
// the payload holds sketch bytes for those layers alone, the rate and the
// descriptor say so, the earlier layers decode exactly as without a sketch
// and the later ones exactly as with it everywhere, and the block header
// carries the first layer so a codec that sketches other layers refuses
// the block.
TEST(VqCodecTest, KeySketchOnTheLaterLayersOnly) {
  const KvLayout layout{4, 2, 16};
  Fixture f(SmallConfig(), layout);
  ASSERT_TRUE(f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, {}).ok());
  const CodebookSet& books = f.codec->codebooks();
  auto plain = VqCodec::FromCodebookSet(books);
  auto everywhere = VqCodec::FromCodebookSet(books, 1, 32, 0);
  auto later = VqCodec::FromCodebookSet(books, 1, 32, 2);
  ASSERT_TRUE(plain.ok() && everywhere.ok() && later.ok());
  const int D = layout.head_dim;
  const int64_t T = 24;
  const int64_t per_layer = T * layout.kv_heads * D;
  const int64_t sketched = T * 2 * layout.kv_heads;  // layers 2 and 3
  EXPECT_EQ((*later)->SketchedVectors(T), sketched);
  EXPECT_EQ((*later)->EncodedBytes(T),
            (*plain)->EncodedBytes(T) + sketched * (2 + 32 / 8));
  EXPECT_DOUBLE_EQ((*later)->KeyBitsPerElement(),
                   (*plain)->KeyBitsPerElement() + (16.0 + 32) / D * 2 / 4);
  EXPECT_EQ((*later)->Descriptor(), (*plain)->Descriptor() + ":ks=32@2");
  EXPECT_EQ((*everywhere)->Descriptor(), (*plain)->Descriptor() + ":ks=32");
  EXPECT_EQ((*later)->KeySketchFirstLayer(), 2);
  EXPECT_EQ((*later)->key_sketch_for_layer(1), nullptr);
  EXPECT_NE((*later)->key_sketch_for_layer(2), nullptr);

  const int64_t n = T * layout.layers * layout.kv_heads;
  std::vector<float> k = testing::KeyLikeVectors(n, D, 41);
  std::vector<float> v = testing::KeyLikeVectors(n, D, 42);
  std::vector<std::vector<float>> keys;
  for (const auto* c : {&*plain, &*everywhere, &*later}) {
    std::vector<uint8_t> payload((*c)->EncodedBytes(T));
    ASSERT_TRUE(
        (*c)->Encode(k.data(), v.data(), T, payload.data(), payload.size())
            .ok());
    std::vector<float> k2(k.size()), v2(v.size());
    ASSERT_TRUE(
        (*c)->Decode(payload.data(), payload.size(), T, k2.data(), v2.data())
            .ok());
    keys.push_back(std::move(k2));
  }
  const auto mid = keys[2].begin() + 2 * per_layer;
  EXPECT_EQ(
      std::vector<float>(keys[2].begin(), mid),
      std::vector<float>(keys[0].begin(), keys[0].begin() + 2 * per_layer));
  EXPECT_EQ(std::vector<float>(mid, keys[2].end()),
            std::vector<float>(keys[1].begin() + 2 * per_layer, keys[1].end()));
  EXPECT_NE(keys[0], keys[1]);  // the sketch does change the later layers

  absl::StatusOr<std::vector<uint8_t>> block =
      EncodeBlock(**later, k.data(), v.data(), T, {});
  ASSERT_TRUE(block.ok()) << block.status();
  absl::StatusOr<BlockHeader> h = VerifyBlock(block->data(), block->size());
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->key_sketch_first_layer, 2);
  std::vector<float> bk(k.size()), bv(v.size());
  EXPECT_TRUE(DecodeBlock(**later, block->data(), block->size(), T, bk.data(),
                          bv.data())
                  .ok());
  EXPECT_EQ(bk, keys[2]);
  absl::Status other = DecodeBlock(**everywhere, block->data(), block->size(),
                                   T, bk.data(), bv.data());
  EXPECT_EQ(other.code(), absl::StatusCode::kFailedPrecondition) << other;
  EXPECT_NE(other.message().find("from layer 2"), std::string::npos) << other;
  absl::StatusOr<std::vector<uint8_t>> block0 =
      EncodeBlock(**everywhere, k.data(), v.data(), T, {});
  ASSERT_TRUE(block0.ok());
  EXPECT_EQ(DecodeBlock(**later, block0->data(), block0->size(), T, bk.data(),
                        bv.data())
                .code(),
            absl::StatusCode::kFailedPrecondition);

  // A first layer past the last, or one without a sketch, is refused.
  EXPECT_EQ(VqCodec::FromCodebookSet(books, 1, 32, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(VqCodec::FromCodebookSet(books, 1, 32, -1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(VqCodec::FromCodebookSet(books, 1, 0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
// Key gains (CodebookSet::SetKeyGain): a head with gain g and centre c
// decodes its keys as c + g * (codewords - c), before the sketch adds its
// correction; values, the other heads, the payload and ReconstructLayerKeys
// (the codewords alone) are unchanged, and every layer range decodes as
// the slice of the whole.
TEST(VqCodecTest, KeyGainsRescaleDecodedKeysAroundTheCentre) {
  const KvLayout layout{4, 2, 16};
  const int D = layout.head_dim, H = layout.kv_heads;
  for (int sketch_bits : {0, 32}) {
    VqConfig cfg = SmallConfig();
    cfg.key_split = KeySplit::kRopeHalfRotate;
    Fixture f(cfg, layout);
    ASSERT_TRUE(
        f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, {}).ok());
    CodebookSet books = f.codec->codebooks();
    std::vector<float> centre(D);
    for (int d = 0; d < D; ++d) centre[d] = 0.1f * d - 0.5f;
    ASSERT_TRUE(books.SetKeyGain(2, 1, 1.5f, centre).ok());
    auto plain = VqCodec::FromCodebookSet(f.codec->codebooks(), 1, sketch_bits);
    auto gained = VqCodec::FromCodebookSet(books, 1, sketch_bits);
    ASSERT_TRUE(plain.ok() && gained.ok());
    EXPECT_NE((*gained)->codebook_hash(), (*plain)->codebook_hash());
    const int64_t T = 16;
    const int64_t n = T * layout.layers * H;
    const int64_t per_layer = T * H * D;
    std::vector<float> k = testing::KeyLikeVectors(n, D, 41);
    std::vector<float> v = testing::KeyLikeVectors(n, D, 42);
    std::vector<uint8_t> p1((*plain)->EncodedBytes(T));
    std::vector<uint8_t> p2((*gained)->EncodedBytes(T));
    ASSERT_TRUE(
        (*plain)->Encode(k.data(), v.data(), T, p1.data(), p1.size()).ok());
    ASSERT_TRUE(
        (*gained)->Encode(k.data(), v.data(), T, p2.data(), p2.size()).ok());
    EXPECT_EQ(p1, p2);  // the gain changes how keys read, not the codes
    std::vector<float> k1(k.size()), v1(v.size()), k2(k.size()), v2(v.size());
    ASSERT_TRUE(
        (*plain)->Decode(p1.data(), p1.size(), T, k1.data(), v1.data()).ok());
    ASSERT_TRUE(
        (*gained)->Decode(p2.data(), p2.size(), T, k2.data(), v2.data()).ok());
    EXPECT_EQ(v1, v2);
    // Without the sketch k1 is the codeword sum; with it, sum + r.
    std::vector<float> sums(per_layer);
    ASSERT_TRUE(
        (*plain)
            ->ReconstructLayerKeys(2, k.data() + 2 * per_layer, T, sums.data())
            .ok());
    for (int l = 0; l < layout.layers; ++l) {
      for (int64_t t = 0; t < T; ++t) {
        for (int h = 0; h < H; ++h) {
          for (int d = 0; d < D; ++d) {
            const size_t i = ((l * T + t) * H + h) * D + d;
            if (l != 2 || h != 1) {
              ASSERT_EQ(k2[i], k1[i]) << l << " " << t << " " << h;
              continue;
            }
            const float sum = sums[(t * H + h) * D + d];
            if (sketch_bits == 0) {
              ASSERT_EQ(k1[i], sum);
            }
            const float want = centre[d] + 1.5f * (sum - centre[d]) +
                               (k1[i] - sum);  // the sketch's share
            ASSERT_NEAR(k2[i], want, 1e-4f * (1 + std::abs(want)))
                << "t " << t << " d " << d << " sketch " << sketch_bits;
          }
        }
      }
    }
    for (int first = 0; first < layout.layers; ++first) {
      std::vector<float> kr(per_layer), vr(per_layer);
      ASSERT_TRUE((*gained)
                      ->DecodeLayers(p2.data(), p2.size(), T, first, 1,
                                     kr.data(), vr.data())
                      .ok());
      EXPECT_EQ(kr, std::vector<float>(k2.begin() + first * per_layer,
                                       k2.begin() + (first + 1) * per_layer));
    }
  }
}

TEST(VqCodecTest, ReconstructLayerKeysNeedsAFittedLayer) {
  Fixture f(SmallConfig());
  std::vector<float> out(f.tokens * 2 * 16);
  EXPECT_EQ(
      f.codec->ReconstructLayerKeys(0, f.keys.data(), f.tokens, out.data())
          .code(),
      absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(
      f.codec->FitLayer(0, f.keys.data(), f.values.data(), f.tokens, {}).ok());
  EXPECT_TRUE(
      f.codec->ReconstructLayerKeys(0, f.keys.data(), f.tokens, out.data())
          .ok());
  EXPECT_EQ(
      f.codec->ReconstructLayerKeys(2, f.keys.data(), f.tokens, out.data())
          .code(),
      absl::StatusCode::kInvalidArgument);
}

namespace {

// Mean squared error of layer `l`'s decoded keys against the originals.
double LayerKeyError(const std::vector<float>& want,
                     const std::vector<float>& got, int64_t layer_floats,
                     int l) {
  double e = 0;
  for (int64_t i = l * layer_floats; i < (l + 1) * layer_floats; ++i) {
    e += (want[i] - got[i]) * (want[i] - got[i]);
  }
  return e / layer_floats;
}

}  // namespace

// A key refinement codes what a layer's key codes leave: that layer's keys
// decode closer, everything else decodes as before, and the payload grows by
// the refinement section only.
TEST(VqCodecTest, KeyRefinementCodesWhatTheKeyCodesLeave) {
  const KvLayout layout{3, 2, 16};
  const int D = layout.head_dim, H = layout.kv_heads;
  for (KeySplit split : {KeySplit::kNone, KeySplit::kRopeHalfRotate}) {
    for (bool per_head : {false, true}) {
      const std::string where =
          absl::StrCat(KeySplitName(split), " per_head ", per_head);
      VqConfig cfg = SmallConfig();
      cfg.key_split = split;
      cfg.per_head = per_head;
      Fixture f(cfg, layout);
      ASSERT_TRUE(
          f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, {}).ok());
      auto plain = VqCodec::FromCodebookSet(f.codec->codebooks());
      ASSERT_TRUE(plain.ok());
      const int64_t fit_layer = f.tokens * H * D;
      ASSERT_TRUE(
          f.codec
              ->FitKeyRefinement(1, f.keys.data() + fit_layer, f.tokens, 4, {})
              .ok());
      const VqCodec& refined = *f.codec;
      EXPECT_NE(refined.codebook_hash(), (*plain)->codebook_hash()) << where;
      const std::string plain_descriptor = (*plain)->Descriptor();
      EXPECT_EQ(refined.Descriptor().substr(0, plain_descriptor.size() - 16),
                plain_descriptor.substr(0, plain_descriptor.size() - 16));
      EXPECT_EQ(refined.Descriptor().substr(plain_descriptor.size()),
                ":kr=4@1");
      EXPECT_EQ(refined.PayloadFlags(), uint32_t{kBlockHasKeyRefinement});
      // 4 more 6-bit stages on one layer of three.
      EXPECT_DOUBLE_EQ(refined.KeyBitsPerElement(),
                       (*plain)->KeyBitsPerElement() + 4.0 * 6 / 3 / D);

      const int64_t T = 40;
      const int64_t per_layer = T * H * D;
      const int64_t n = T * layout.layers * H;
      // Held-out keys and values, from the fixture's distribution.
      std::vector<float> k = testing::KeyLikeVectors(n, D, 51);
      testing::ApplyRope(k, D, testing::RopeLayout::kHalfRotate);
      std::vector<float> v = testing::KeyLikeVectors(n, D, 52);
      std::vector<uint8_t> p1((*plain)->EncodedBytes(T));
      std::vector<uint8_t> p2(refined.EncodedBytes(T));
      EXPECT_EQ(p2.size(), p1.size() + PackedBytes(T * H * 4, 6));
      ASSERT_TRUE(
          (*plain)->Encode(k.data(), v.data(), T, p1.data(), p1.size()).ok());
      ASSERT_TRUE(
          refined.Encode(k.data(), v.data(), T, p2.data(), p2.size()).ok());
      EXPECT_EQ(std::vector<uint8_t>(p2.begin(), p2.begin() + p1.size()), p1)
          << where;
      std::vector<float> k1(k.size()), v1(v.size()), k2(k.size()), v2(v.size());
      ASSERT_TRUE(
          (*plain)->Decode(p1.data(), p1.size(), T, k1.data(), v1.data()).ok());
      ASSERT_TRUE(
          refined.Decode(p2.data(), p2.size(), T, k2.data(), v2.data()).ok());
      EXPECT_EQ(v1, v2);
      for (int l : {0, 2}) {
        EXPECT_TRUE(std::equal(k1.begin() + l * per_layer,
                               k1.begin() + (l + 1) * per_layer,
                               k2.begin() + l * per_layer))
            << where << " layer " << l;
      }
      const double before = LayerKeyError(k, k1, per_layer, 1);
      const double after = LayerKeyError(k, k2, per_layer, 1);
      EXPECT_LT(after, 0.8 * before) << where;
      // ReconstructLayerKeys includes the refinement (no gains here).
      std::vector<float> rec(per_layer);
      ASSERT_TRUE(
          refined.ReconstructLayerKeys(1, k.data() + per_layer, T, rec.data())
              .ok());
      for (int64_t i = 0; i < per_layer; ++i) {
        ASSERT_NEAR(rec[i], k2[per_layer + i], 1e-5f * (1 + std::abs(rec[i])))
            << where << " " << i;
      }
      // A block carries the flag, and opens with the codec that sealed it.
      absl::StatusOr<std::vector<uint8_t>> block =
          EncodeBlock(refined, k.data(), v.data(), T, BlockOptions{});
      ASSERT_TRUE(block.ok()) << block.status();
      absl::StatusOr<BlockHeader> header =
          VerifyBlock(block->data(), block->size());
      ASSERT_TRUE(header.ok()) << header.status();
      EXPECT_NE(header->flags & kBlockHasKeyRefinement, 0u);
      std::vector<float> k3(k.size()), v3(v.size());
      ASSERT_TRUE(DecodeBlock(refined, block->data(), block->size(), T,
                              k3.data(), v3.data())
                      .ok());
      EXPECT_EQ(k3, k2);

      // The device paths take refinements (vq_decode_plan_test checks
      // their arithmetic). Code attention refuses pre-RoPE keys only
      // (code_attention_test covers refinements).
      absl::StatusOr<VqDecodePlan> plan =
          MakeVqDecodePlan(refined, std::nullopt, RopePairs::kAdjacent);
      ASSERT_TRUE(plan.ok()) << plan.status();
      EXPECT_EQ(plan->shape.refine_stages,
                refined.codebooks().key_refine_stages());
      EXPECT_EQ(CodeAttention::Create(refined, 1, 0).ok(),
                refined.codebooks().config().keys_post_rope);
    }
  }
}

TEST(VqCodecTest, KeyRefinementIsDecodedBeforeTheGain) {
  const KvLayout layout{2, 2, 16};
  const int D = layout.head_dim, H = layout.kv_heads;
  Fixture f(SmallConfig(), layout);
  ASSERT_TRUE(f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, {}).ok());
  ASSERT_TRUE(f.codec
                  ->FitKeyRefinement(1, f.keys.data() + f.tokens * H * D,
                                     f.tokens, 2, {})
                  .ok());
  CodebookSet books = f.codec->codebooks();
  std::vector<float> centre(D, 0.25f);
  ASSERT_TRUE(books.SetKeyGain(1, 0, 1.25f, centre).ok());
  auto gained = VqCodec::FromCodebookSet(books);
  ASSERT_TRUE(gained.ok()) << gained.status();
  const int64_t T = 8, per_layer = T * H * D;
  std::vector<float> k = testing::KeyLikeVectors(T * 2 * H, D, 61);
  std::vector<float> v = testing::KeyLikeVectors(T * 2 * H, D, 62);
  std::vector<uint8_t> p((*gained)->EncodedBytes(T));
  ASSERT_TRUE(
      (*gained)->Encode(k.data(), v.data(), T, p.data(), p.size()).ok());
  std::vector<float> kd(k.size()), vd(v.size()), rec(per_layer);
  ASSERT_TRUE(
      (*gained)->Decode(p.data(), p.size(), T, kd.data(), vd.data()).ok());
  ASSERT_TRUE((*gained)
                  ->ReconstructLayerKeys(1, k.data() + per_layer, T, rec.data())
                  .ok());
  for (int64_t t = 0; t < T; ++t) {
    for (int d = 0; d < D; ++d) {
      const float sum = rec[(t * H + 0) * D + d];
      const float want = 0.25f + 1.25f * (sum - 0.25f);
      ASSERT_NEAR(kd[per_layer + (t * H + 0) * D + d], want,
                  1e-5f * (1 + std::abs(want)));
    }
  }
}

TEST(VqCodecTest, KeyRefinementChecksItsArguments) {
  Fixture f(SmallConfig());
  const int64_t layer_floats = f.tokens * 2 * 16;
  // The layer must be fitted first.
  EXPECT_EQ(f.codec->FitKeyRefinement(0, f.keys.data(), f.tokens, 2, {}).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(f.codec->Fit(f.keys.data(), f.values.data(), f.tokens, {}).ok());
  EXPECT_EQ(f.codec->FitKeyRefinement(0, f.keys.data(), f.tokens, 0, {}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.codec->FitKeyRefinement(2, f.keys.data(), f.tokens, 2, {}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(
      f.codec->FitKeyRefinement(0, f.keys.data(), f.tokens, 2, {}).ok());
  EXPECT_TRUE(f.codec->fitted());
  // Once per layer, and every refined layer has the same stages.
  EXPECT_EQ(f.codec->FitKeyRefinement(0, f.keys.data(), f.tokens, 2, {}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      f.codec
          ->FitKeyRefinement(1, f.keys.data() + layer_floats, f.tokens, 3, {})
          .code(),
      absl::StatusCode::kInvalidArgument);
  // A refined layer's codes are not refit under its refinement.
  EXPECT_EQ(
      f.codec->FitLayer(0, f.keys.data(), f.values.data(), f.tokens, {}).code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(f.codec
                  ->FitLayer(1, f.keys.data() + layer_floats,
                             f.values.data() + layer_floats, f.tokens, {})
                  .ok());
}

}  // namespace vqkv
