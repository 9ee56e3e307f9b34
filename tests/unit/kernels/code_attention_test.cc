// Code attention (kernels/code_attention.h) against decode-then-attend: the
// payload decoded by VqCodec::Decode, then softmax attention in double
// precision. Random codebooks and codes at the default D=64 rate (keys 28 x
// 10 bits, split 14 + 14 or not, values 8 x 9 bits), with and without a key
// sketch and per-head codebooks.
//
// Tolerance: max |out - reference| <= kTol * max |decoded value| per output.
// Logits come from float tables summed over 28 stages and the value product
// is a float sgemm over Nv*K = 4096 weights, so the error is a few float
// roundings relative to the values' scale (measured max ~1e-6); kTol = 2e-5
// is ~10x that. A single changed key code of a heavily weighted token moves
// the output by far more (CodeChangeIsDetected), so the check can fail.
#include "kernels/code_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/bitpack.h"
#include "kernels/cpu/code_attention_kernels.h"
#include "kernels/fp16.h"
#include "tests/testing/random_vq_codec.h"

namespace vqkv {
namespace {

constexpr double kTol = 2e-5;

using TestCodec = testing::RandomVqCodecSpec;

std::unique_ptr<VqCodec> MakeCodec(const TestCodec& su, uint32_t seed) {
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      testing::RandomVqCodec(su, seed);
  EXPECT_TRUE(codec.ok()) << codec.status();
  return codec.ok() ? *std::move(codec) : nullptr;
}

std::vector<uint8_t> RandomPayload(const VqCodec& codec, int64_t tokens,
                                   uint32_t seed) {
  absl::StatusOr<std::vector<uint8_t>> p =
      testing::RandomVqPayload(codec, tokens, seed);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : std::vector<uint8_t>();
}

std::vector<float> RandomQueries(int group, int dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> q(static_cast<size_t>(group) * dim);
  for (float& x : q) x = nd(rng);
  return q;
}

// Decode-then-attend in double: out [group][D] over tokens [0, n) of
// (layer, head) in keys/values [layer][tokens][kv_head][D].
std::vector<double> DecodedAttention(const std::vector<float>& keys,
                                     const std::vector<float>& values,
                                     int64_t tokens, int kv_heads, int D,
                                     int layer, int head, const float* q,
                                     int group, float scale, int64_t n) {
  std::vector<double> out(static_cast<size_t>(group) * D, 0.0);
  for (int h = 0; h < group; ++h) {
    std::vector<double> logit(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      const float* k =
          keys.data() + ((layer * tokens + t) * kv_heads + head) * D;
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += double(q[h * D + d]) * k[d];
      logit[t] = scale * dot;
    }
    const double m = *std::max_element(logit.begin(), logit.end());
    double sum = 0;
    for (int64_t t = 0; t < n; ++t) {
      const double p = std::exp(logit[t] - m);
      sum += p;
      const float* v =
          values.data() + ((layer * tokens + t) * kv_heads + head) * D;
      for (int d = 0; d < D; ++d) out[h * D + d] += p * v[d];
    }
    for (int d = 0; d < D; ++d) out[h * D + d] /= sum;
  }
  return out;
}

struct Fixture {
  std::unique_ptr<VqCodec> codec;
  int64_t tokens = 0;
  std::vector<uint8_t> payload;
  VqCodes codes;
  std::vector<float> keys, values;  // decoded by the codec
  float vmax = 0;
};

Fixture MakeFixture(const TestCodec& su, int64_t tokens, uint32_t seed) {
  Fixture f;
  f.codec = MakeCodec(su, seed);
  f.tokens = tokens;
  f.payload = RandomPayload(*f.codec, tokens, seed + 1);
  absl::StatusOr<VqCodes> codes =
      UnpackVqCodes(*f.codec, f.payload.data(), f.payload.size(), tokens);
  EXPECT_TRUE(codes.ok()) << codes.status();
  f.codes = *std::move(codes);
  const size_t n =
      static_cast<size_t>(tokens * su.layers * su.kv_heads) * su.head_dim;
  f.keys.resize(n);
  f.values.resize(n);
  EXPECT_TRUE(f.codec
                  ->Decode(f.payload.data(), f.payload.size(), tokens,
                           f.keys.data(), f.values.data())
                  .ok());
  for (float x : f.values) f.vmax = std::max(f.vmax, std::abs(x));
  return f;
}

// Max |a - b| over group * D outputs, relative to vmax.
double RelErr(const std::vector<float>& a, const std::vector<double>& b,
              float vmax) {
  double e = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    e = std::max(e, std::abs(double(a[i]) - b[i]));
  }
  return e / vmax;
}

// Checks Attend and AttendRef against decode-then-attend for every layer,
// head and the given group sizes and token counts.
void CheckAgainstDecode(const TestCodec& su, int64_t tokens,
                        const std::vector<int>& groups,
                        const std::vector<int64_t>& counts, uint32_t seed) {
  Fixture f = MakeFixture(su, tokens, seed);
  const int D = su.head_dim;
  const float scale = 1.0f / std::sqrt(float(D));
  CodeAttentionScratch scratch;
  double worst = 0;
  for (int l = 0; l < su.layers; ++l) {
    for (int h = 0; h < su.kv_heads; ++h) {
      absl::StatusOr<CodeAttention> att = CodeAttention::Create(*f.codec, l, h);
      ASSERT_TRUE(att.ok()) << att.status();
      for (int group : groups) {
        const std::vector<float> q = RandomQueries(group, D, seed + group);
        for (int64_t n : counts) {
          CodedTokens tok = CodedTokensOf(*f.codec, f.codes, tokens, l, h);
          tok.n = n;
          AttentionPartial fast, ref;
          ASSERT_TRUE(
              att->Attend(q.data(), group, scale, tok, &fast, &scratch).ok());
          ASSERT_TRUE(att->AttendRef(q.data(), group, scale, tok, &ref).ok());
          std::vector<float> yf(static_cast<size_t>(group) * D), yr = yf;
          fast.Normalize(yf.data());
          ref.Normalize(yr.data());
          const std::vector<double> want =
              DecodedAttention(f.keys, f.values, tokens, su.kv_heads, D, l, h,
                               q.data(), group, scale, n);
          const double ef = RelErr(yf, want, f.vmax);
          const double er = RelErr(yr, want, f.vmax);
          worst = std::max({worst, ef, er});
          EXPECT_LE(ef, kTol) << "fast: layer " << l << " head " << h
                              << " group " << group << " n " << n;
          EXPECT_LE(er, kTol) << "ref: layer " << l << " head " << h
                              << " group " << group << " n " << n;
        }
      }
    }
  }
  std::printf("max relative error %.3g (tolerance %.3g)\n", worst, kTol);
}

TEST(CodeAttentionTest, MatchesDecodeThenAttendDefaultRate) {
  TestCodec su;  // D = 64, keys 28 x 10 bits, values 8 x 9 bits
  // 700 tokens: counts below and above K = 512 take both value paths.
  CheckAgainstDecode(su, 700, {1, 3, 4}, {1, 2, 37, 511, 512, 700}, 1);
}

TEST(CodeAttentionTest, MatchesDecodeThenAttendRopeSplitPerHead) {
  TestCodec su;
  su.split = KeySplit::kRopeAdjacentPairs;  // 14 + 14 stages on 32 dims
  su.per_head = true;
  CheckAgainstDecode(su, 600, {2, 3, 8}, {1, 100, 600}, 2);
}

TEST(CodeAttentionTest, MatchesDecodeThenAttendHalfRotateWithSketch) {
  TestCodec su;
  su.split = KeySplit::kRopeHalfRotate;
  su.sketch_bits = 64;
  CheckAgainstDecode(su, 600, {3, 5}, {1, 9, 600}, 3);
  su.split = KeySplit::kNone;
  su.sketch_bits = 128;
  CheckAgainstDecode(su, 300, {1, 9}, {1, 300}, 4);
  // The sketch on the last layer only: layer 0 scores without one.
  su.sketch_first_layer = su.layers - 1;
  CheckAgainstDecode(su, 300, {1, 9}, {1, 300}, 5);
}

// A key refinement is one more table group over every dimension, before
// the gain: decode-then-attend on the refined layers (0 and 2 of 3; the
// unrefined one between reads its codes at the right place), with a split,
// per-head codebooks, gains and a sketch on the last layer.
TEST(CodeAttentionTest, MatchesDecodeThenAttendWithKeyRefinement) {
  TestCodec su;
  su.layers = 3;
  su.refine_layers = {0, 2};
  su.refine_stages = 6;
  CheckAgainstDecode(su, 300, {1, 3}, {1, 37, 300}, 6);
  su.split = KeySplit::kRopeAdjacentPairs;
  su.per_head = true;
  su.key_gains = true;
  su.sketch_bits = 64;
  su.sketch_first_layer = 2;
  CheckAgainstDecode(su, 200, {2, 4}, {1, 200}, 7);
  Fixture f = MakeFixture(su, 8, 8);
  for (int l = 0; l < su.layers; ++l) {
    auto att = CodeAttention::Create(*f.codec, l, 1);
    ASSERT_TRUE(att.ok()) << att.status();
    EXPECT_EQ(att->key_stages(), l == 1 ? 28 : 34) << "layer " << l;
    EXPECT_EQ(VqKeyCodeStages(*f.codec, l), att->key_stages());
    EXPECT_EQ(f.codes.key_begin[l + 1] - f.codes.key_begin[l],
              size_t{8} * su.kv_heads * att->key_stages());
  }
}

// Key gains scale the codeword tables and add the centre's constant term:
// still decode-then-attend, with and without the sketch and a split.
TEST(CodeAttentionTest, MatchesDecodeThenAttendWithKeyGains) {
  TestCodec su;
  su.key_gains = true;
  CheckAgainstDecode(su, 600, {1, 3, 20}, {1, 37, 600}, 6);
  su.split = KeySplit::kRopeAdjacentPairs;
  su.per_head = true;
  su.sketch_bits = 64;
  su.sketch_first_layer = 1;
  CheckAgainstDecode(su, 300, {3}, {1, 300}, 7);
}

TEST(CodeAttentionTest, GroupSizes) {
  TestCodec su;
  su.layers = 1;
  su.kv_heads = 1;
  CheckAgainstDecode(su, 520, {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 32},
                     {520}, 5);
}

TEST(CodeAttentionTest, EmptyAndSingleToken) {
  TestCodec su;
  Fixture f = MakeFixture(su, 4, 6);
  absl::StatusOr<CodeAttention> att = CodeAttention::Create(*f.codec, 1, 1);
  ASSERT_TRUE(att.ok());
  const std::vector<float> q = RandomQueries(3, 64, 7);
  CodeAttentionScratch scratch;
  AttentionPartial p;
  // n = 0: the empty state (null code arrays allowed).
  ASSERT_TRUE(
      att->Attend(q.data(), 3, 0.125f, CodedTokens{}, &p, &scratch).ok());
  for (int h = 0; h < 3; ++h) {
    EXPECT_EQ(p.sum[h], 0.0f);
    EXPECT_TRUE(std::isinf(p.max[h]) && p.max[h] < 0);
  }
  EXPECT_TRUE(std::all_of(p.out.begin(), p.out.end(),
                          [](float x) { return x == 0.0f; }));
  ASSERT_TRUE(att->AttendRef(q.data(), 3, 0.125f, CodedTokens{}, &p).ok());
  EXPECT_EQ(p.sum[0], 0.0f);
  // n = 1: the output is that token's decoded value for every head.
  CodedTokens tok = CodedTokensOf(*f.codec, f.codes, 4, 1, 1);
  tok.n = 1;
  ASSERT_TRUE(att->Attend(q.data(), 3, 0.125f, tok, &p, &scratch).ok());
  std::vector<float> y(3 * 64);
  p.Normalize(y.data());
  const float* v = f.values.data() + ((1 * 4 + 0) * 2 + 1) * 64;
  for (int h = 0; h < 3; ++h) {
    EXPECT_FLOAT_EQ(p.sum[h], 1.0f);
    for (int d = 0; d < 64; ++d) {
      EXPECT_NEAR(y[h * 64 + d], v[d], kTol * f.vmax) << h << " " << d;
    }
  }
}

TEST(CodeAttentionTest, MergedPartialsEqualOnePass) {
  TestCodec su;
  Fixture f = MakeFixture(su, 900, 8);
  absl::StatusOr<CodeAttention> att = CodeAttention::Create(*f.codec, 0, 1);
  ASSERT_TRUE(att.ok());
  const std::vector<float> q = RandomQueries(4, 64, 9);
  CodeAttentionScratch scratch;
  CodedTokens all = CodedTokensOf(*f.codec, f.codes, 900, 0, 1);
  CodedTokens a = all, b = all;
  a.n = 250;
  b.n = 650;
  b.key_codes += 250 * b.key_stride;
  b.value_codes += 250 * b.value_stride;
  AttentionPartial pa, pb, pall;
  ASSERT_TRUE(att->Attend(q.data(), 4, 0.125f, a, &pa, &scratch).ok());
  ASSERT_TRUE(att->Attend(q.data(), 4, 0.125f, b, &pb, &scratch).ok());
  ASSERT_TRUE(att->Attend(q.data(), 4, 0.125f, all, &pall, &scratch).ok());
  ASSERT_TRUE(MergeAttentionPartial(pb, &pa).ok());
  std::vector<float> y1(4 * 64), y2(4 * 64);
  pa.Normalize(y1.data());
  pall.Normalize(y2.data());
  for (size_t i = 0; i < y1.size(); ++i) {
    EXPECT_NEAR(y1[i], y2[i], kTol * f.vmax) << i;
  }
  // Merging an empty partial changes nothing; shapes must match.
  AttentionPartial empty;
  empty.Reset(4, 64);
  AttentionPartial copy = pall;
  ASSERT_TRUE(MergeAttentionPartial(empty, &copy).ok());
  EXPECT_EQ(copy.out, pall.out);
  ASSERT_TRUE(MergeAttentionPartial(pall, &empty).ok());
  EXPECT_EQ(empty.out, pall.out);
  AttentionPartial other;
  other.Reset(3, 64);
  EXPECT_EQ(MergeAttentionPartial(other, &copy).code(),
            absl::StatusCode::kInvalidArgument);
}

// The comparison can fail: one changed key code of the most attended token
// moves the output well past the tolerance.
TEST(CodeAttentionTest, CodeChangeIsDetected) {
  TestCodec su;
  su.layers = 1;
  su.kv_heads = 1;
  Fixture f = MakeFixture(su, 200, 10);
  absl::StatusOr<CodeAttention> att = CodeAttention::Create(*f.codec, 0, 0);
  ASSERT_TRUE(att.ok());
  const std::vector<float> q = RandomQueries(1, 64, 11);
  const float scale = 0.125f;
  CodeAttentionScratch scratch;
  CodedTokens tok = CodedTokensOf(*f.codec, f.codes, 200, 0, 0);
  // The most attended token under the decoded keys.
  int64_t best = 0;
  double best_logit = -1e30;
  for (int64_t t = 0; t < 200; ++t) {
    double dot = 0;
    for (int d = 0; d < 64; ++d) dot += double(q[d]) * f.keys[t * 64 + d];
    if (dot > best_logit) best_logit = dot, best = t;
  }
  std::vector<uint16_t> changed = f.codes.keys;
  changed[best * 28] ^= 1;  // stage 0 of its key
  tok.key_codes = changed.data();
  AttentionPartial p;
  ASSERT_TRUE(att->Attend(q.data(), 1, scale, tok, &p, &scratch).ok());
  std::vector<float> y(64);
  p.Normalize(y.data());
  const std::vector<double> want = DecodedAttention(
      f.keys, f.values, 200, 1, 64, 0, 0, q.data(), 1, scale, 200);
  EXPECT_GT(RelErr(y, want, f.vmax), 100 * kTol);
}

// The dispatching CPU kernels against their scalar references (the AVX2
// paths when the CPU has them; the scalar_cap run checks the fallback).
TEST(CodeAttentionKernelsTest, MatchReferences) {
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int dim : {8, 32, 64, 12}) {
    for (int group : {1, 3, 4, 7}) {
      const int gp = (group + 3) / 4 * 4;
      const int64_t rows = 300;
      std::vector<float> cb(static_cast<size_t>(rows) * dim);
      std::vector<float> q(static_cast<size_t>(group) * dim);
      for (float& x : cb) x = nd(rng);
      for (float& x : q) x = nd(rng);
      std::vector<float> t1(static_cast<size_t>(rows) * gp, 9.0f), t2 = t1;
      cpu::QueryTable(cb.data(), rows, dim, q.data(), group, gp, 0.5f,
                      t1.data());
      cpu::QueryTableRef(cb.data(), rows, dim, q.data(), group, gp, 0.5f,
                         t2.data());
      for (size_t i = 0; i < t1.size(); ++i) {
        // Sums of dim products of unit normals: |error| ~ dim * 2^-24 * 4.
        EXPECT_NEAR(t1[i], t2[i], 1e-5 * dim)
            << dim << " " << group << " " << i;
      }
      for (int64_t r = 0; r < rows; ++r) {
        for (int h = group; h < gp; ++h) EXPECT_EQ(t1[r * gp + h], 0.0f);
      }
      // Weights with zero rows (skipped) and zero padding lanes.
      std::vector<float> w(static_cast<size_t>(rows) * gp, 0.0f);
      for (int64_t r = 0; r < rows; r += 3) {
        for (int h = 0; h < group; ++h) w[r * gp + h] = std::abs(nd(rng));
      }
      std::vector<float> o1(static_cast<size_t>(group) * dim, 1.0f), o2 = o1;
      cpu::WeightedCodewordSum(w.data(), gp, group, cb.data(), rows, dim,
                               o1.data());
      cpu::WeightedCodewordSumRef(w.data(), gp, group, cb.data(), rows, dim,
                                  o2.data());
      for (size_t i = 0; i < o1.size(); ++i) {
        EXPECT_NEAR(o1[i], o2[i], 1e-4) << dim << " " << group << " " << i;
      }
    }
  }
}

TEST(CodeAttentionTest, InvalidArguments) {
  TestCodec su;
  Fixture f = MakeFixture(su, 8, 12);
  absl::StatusOr<CodeAttention> att = CodeAttention::Create(*f.codec, 0, 0);
  ASSERT_TRUE(att.ok());
  EXPECT_EQ(att->head_dim(), 64);
  EXPECT_EQ(att->key_stages(), 28);
  EXPECT_EQ(att->value_stages(), 8);
  EXPECT_EQ(att->sketch_bytes(), 0u);
  const std::vector<float> q = RandomQueries(2, 64, 13);
  CodeAttentionScratch scratch;
  AttentionPartial p;
  const CodedTokens good = CodedTokensOf(*f.codec, f.codes, 8, 0, 0);
  auto code = [&](const float* qq, int group, const CodedTokens& tok,
                  AttentionPartial* out, CodeAttentionScratch* s) {
    const absl::StatusCode c1 =
        att->Attend(qq, group, 0.125f, tok, out, s).code();
    if (s != nullptr) {
      EXPECT_EQ(att->AttendRef(qq, group, 0.125f, tok, out).code(), c1);
    }
    return c1;
  };
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(q.data(), 2, good, &p, &scratch), absl::StatusCode::kOk);
  EXPECT_EQ(code(nullptr, 2, good, &p, &scratch), kBad);
  EXPECT_EQ(code(q.data(), 0, good, &p, &scratch), kBad);
  EXPECT_EQ(code(q.data(), 2, good, nullptr, &scratch), kBad);
  EXPECT_EQ(code(q.data(), 2, good, &p, nullptr), kBad);
  CodedTokens t = good;
  t.n = -1;
  EXPECT_EQ(code(q.data(), 2, t, &p, &scratch), kBad);
  t = good;
  t.key_codes = nullptr;
  EXPECT_EQ(code(q.data(), 2, t, &p, &scratch), kBad);
  t = good;
  t.value_stride = 7;
  EXPECT_EQ(code(q.data(), 2, t, &p, &scratch), kBad);
  // Codes past the codebook size (keys 10 bits, values 9 bits).
  std::vector<uint16_t> keys = f.codes.keys;
  keys[3] = 1024;
  t = good;
  t.key_codes = keys.data();
  EXPECT_EQ(code(q.data(), 2, t, &p, &scratch), kBad);
  std::vector<uint16_t> values = f.codes.values;
  values[5] = 512;
  t = good;
  t.value_codes = values.data();
  EXPECT_EQ(code(q.data(), 2, t, &p, &scratch), kBad);
  // Out of range layer / head.
  EXPECT_EQ(CodeAttention::Create(*f.codec, 2, 0).status().code(), kBad);
  EXPECT_EQ(CodeAttention::Create(*f.codec, 0, -1).status().code(), kBad);
  // A payload of the wrong size.
  EXPECT_EQ(UnpackVqCodes(*f.codec, f.payload.data(), f.payload.size() - 1, 8)
                .status()
                .code(),
            kBad);
}

TEST(CodeAttentionTest, SketchCodecNeedsTheSketch) {
  TestCodec su;
  su.sketch_bits = 64;
  Fixture f = MakeFixture(su, 8, 14);
  absl::StatusOr<CodeAttention> att = CodeAttention::Create(*f.codec, 0, 0);
  ASSERT_TRUE(att.ok());
  EXPECT_EQ(att->sketch_bytes(), 10u);
  CodedTokens t = CodedTokensOf(*f.codec, f.codes, 8, 0, 0);
  EXPECT_EQ(t.sketch_stride, 2 * 10);
  t.sketch = nullptr;
  const std::vector<float> q = RandomQueries(1, 64, 15);
  CodeAttentionScratch scratch;
  AttentionPartial p;
  EXPECT_EQ(att->Attend(q.data(), 1, 0.125f, t, &p, &scratch).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CodeAttentionTest, PreRopeKeysAreUnimplemented) {
  TestCodec su;
  su.post_rope = false;
  std::unique_ptr<VqCodec> codec = MakeCodec(su, 16);
  absl::StatusOr<CodeAttention> att = CodeAttention::Create(*codec, 0, 0);
  EXPECT_EQ(att.status().code(), absl::StatusCode::kUnimplemented);
}

TEST(CodeAttentionTest, UnfittedCodecIsRejected) {
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      VqCodec::Create(KvLayout{1, 1, 64}, VqConfig{});
  ASSERT_TRUE(codec.ok());
  EXPECT_EQ(CodeAttention::Create(**codec, 0, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace vqkv
