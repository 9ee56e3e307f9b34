#include "kernels/baselines/kivi_codec.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/bitpack.h"
#include "kernels/fp16.h"

namespace vqkv {
namespace {

constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;

std::vector<float> RandomTensor(int64_t n, uint32_t seed, float sd = 2.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::unique_ptr<KiviCodec> MakeCodec(KvLayout layout, int bits, int group) {
  auto codec = KiviCodec::Create(layout, KiviOptions{bits, group});
  EXPECT_TRUE(codec.ok()) << codec.status();
  return codec.ok() ? std::move(*codec) : nullptr;
}

struct RoundTrip {
  std::vector<float> keys, values;
};

RoundTrip EncodeDecode(const KiviCodec& codec, const std::vector<float>& k,
                       const std::vector<float>& v, int64_t tokens) {
  std::vector<uint8_t> payload(codec.EncodedBytes(tokens));
  absl::Status s =
      codec.Encode(k.data(), v.data(), tokens, payload.data(), payload.size());
  EXPECT_TRUE(s.ok()) << s;
  RoundTrip rt{std::vector<float>(k.size()), std::vector<float>(v.size())};
  s = codec.Decode(payload.data(), payload.size(), tokens, rt.keys.data(),
                   rt.values.data());
  EXPECT_TRUE(s.ok()) << s;
  return rt;
}

// Largest error the quantizer may make on a group spanning [mn, mx]: half a
// step of the stored scale, where the stored scale is the exact one computed
// from the binary16 zero point, rounded up to binary16 (relative 2^-10, or
// one subnormal step), plus the binary16 rounding of the zero point, plus
// float32 arithmetic slack.
double ErrorBound(float mn, float mx, int bits) {
  const double qmax = (1 << bits) - 1;
  const double half_ulp_min = 6e-8;
  const double e_zero = std::ldexp(std::abs(mn), -11) + half_ulp_min;
  const double scale =
      (mx - mn + e_zero) / qmax * (1 + std::ldexp(1.0, -10)) + 2 * half_ulp_min;
  const double slack = 4e-7 * std::max(std::abs(mn), std::abs(mx));
  return scale / 2 + e_zero + slack;
}

// Checks every element against ErrorBound of its group, with groups formed
// exactly as kivi_codec.h documents.
void ExpectWithinBounds(const KvLayout& lay, int64_t T, int bits, int G,
                        const std::vector<float>& k,
                        const std::vector<float>& v, const RoundTrip& rt) {
  const int64_t H = lay.kv_heads, D = lay.head_dim, HD = H * D;
  for (int64_t l = 0; l < lay.layers; ++l) {
    for (int64_t e = 0; e < HD; ++e) {
      for (int64_t t0 = 0; t0 < T; t0 += G) {
        const int64_t t1 = std::min<int64_t>(T, t0 + G);
        float mn = std::numeric_limits<float>::max(), mx = -mn;
        for (int64_t t = t0; t < t1; ++t) {
          mn = std::min(mn, k[(l * T + t) * HD + e]);
          mx = std::max(mx, k[(l * T + t) * HD + e]);
        }
        const double bound = ErrorBound(mn, mx, bits);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t i = (l * T + t) * HD + e;
          ASSERT_LE(std::abs(rt.keys[i] - k[i]), bound)
              << "key l=" << l << " t=" << t << " e=" << e;
        }
      }
    }
  }
  for (int64_t r = 0; r < lay.layers * T * H; ++r) {
    for (int64_t c0 = 0; c0 < D; c0 += G) {
      const int64_t c1 = std::min<int64_t>(D, c0 + G);
      const auto [lo, hi] =
          std::minmax_element(v.begin() + r * D + c0, v.begin() + r * D + c1);
      const double bound = ErrorBound(*lo, *hi, bits);
      for (int64_t c = c0; c < c1; ++c) {
        ASSERT_LE(std::abs(rt.values[r * D + c] - v[r * D + c]), bound)
            << "value vector " << r << " channel " << c;
      }
    }
  }
}

double Mse(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return s / a.size();
}

TEST(KiviCodecTest, ErrorWithinHalfStepForEveryGroupShape) {
  const KvLayout lay{.layers = 2, .kv_heads = 2, .head_dim = 40};
  for (int bits : {2, 4, 8}) {
    for (int G : {1, 16, 32, 64}) {
      for (int64_t T : {1, 7, 32, 45}) {
        SCOPED_TRACE(testing::Message()
                     << "bits=" << bits << " G=" << G << " T=" << T);
        const int64_t n = T * lay.ElementsPerToken();
        const auto k = RandomTensor(n, 11 + T), v = RandomTensor(n, 97 + T);
        auto codec = MakeCodec(lay, bits, G);
        ASSERT_NE(codec, nullptr);
        const RoundTrip rt = EncodeDecode(*codec, k, v, T);
        ExpectWithinBounds(lay, T, bits, G, k, v, rt);
      }
    }
  }
}

TEST(KiviCodecTest, MoreBitsLessError) {
  const KvLayout lay{.layers = 1, .kv_heads = 4, .head_dim = 64};
  const int64_t T = 96, n = T * lay.ElementsPerToken();
  const auto k = RandomTensor(n, 3), v = RandomTensor(n, 4);
  double prev_k = INFINITY, prev_v = INFINITY;
  for (int bits : {2, 3, 4, 8}) {
    auto codec = MakeCodec(lay, bits, 32);
    ASSERT_NE(codec, nullptr);
    const RoundTrip rt = EncodeDecode(*codec, k, v, T);
    const double mk = Mse(rt.keys, k), mv = Mse(rt.values, v);
    EXPECT_LT(mk, prev_k) << bits;
    EXPECT_LT(mv, prev_v) << bits;
    prev_k = mk;
    prev_v = mv;
  }
  // Four bits has ~5x finer steps than two (15 vs 3 levels): MSE ~25x lower.
  auto c2 = MakeCodec(lay, 2, 32), c4 = MakeCodec(lay, 4, 32);
  const double m2 = Mse(EncodeDecode(*c2, k, v, T).keys, k);
  const double m4 = Mse(EncodeDecode(*c4, k, v, T).keys, k);
  EXPECT_LT(m4 * 10, m2);
}

TEST(KiviCodecTest, PerChannelKeysIsolateOutlierChannels) {
  // One key channel 100x larger than the rest: per-channel grouping keeps
  // the other channels' error at their own scale.
  const KvLayout lay{.layers = 1, .kv_heads = 1, .head_dim = 16};
  const int64_t T = 64, n = T * lay.ElementsPerToken();
  auto k = RandomTensor(n, 5, 1.0f);
  const auto v = RandomTensor(n, 6, 1.0f);
  for (int64_t t = 0; t < T; ++t) k[t * 16 + 3] *= 100.0f;
  auto codec = MakeCodec(lay, 4, 32);
  ASSERT_NE(codec, nullptr);
  const RoundTrip rt = EncodeDecode(*codec, k, v, T);
  for (int64_t t = 0; t < T; ++t) {
    for (int c = 0; c < 16; ++c) {
      if (c == 3) continue;
      EXPECT_LT(std::abs(rt.keys[t * 16 + c] - k[t * 16 + c]), 0.5f);
    }
  }
}

TEST(KiviCodecTest, ConstantInputsAreNaNFreeAndNoWorseThanHalf) {
  // A constant group has zero range. When the constant is a binary16 value
  // the scale is 0 and decode is exact; otherwise the zero point is rounded
  // and the error is at most that rounding.
  const KvLayout lay{.layers = 2, .kv_heads = 2, .head_dim = 32};
  for (float c : {0.0f, 1.2345f, -70.1f, 65504.0f, 0.5f}) {
    SCOPED_TRACE(c);
    const int64_t T = 40, n = T * lay.ElementsPerToken();
    const std::vector<float> k(n, c), v(n, -c);
    auto codec = MakeCodec(lay, 2, 32);
    ASSERT_NE(codec, nullptr);
    const RoundTrip rt = EncodeDecode(*codec, k, v, T);
    const float h = HalfToFloatRef(FloatToHalfRef(c));
    const float tol = std::abs(h - c) * 1.0001f;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::isfinite(rt.keys[i]) && std::isfinite(rt.values[i]));
      ASSERT_LE(std::abs(rt.keys[i] - c), tol) << i;
      ASSERT_LE(std::abs(rt.values[i] + c), tol) << i;
    }
  }
}

TEST(KiviCodecTest, ExtremeRangeStaysFinite) {
  const KvLayout lay{.layers = 1, .kv_heads = 1, .head_dim = 4};
  const std::vector<float> k = {-65504, 65504, 0, 1, 65504, -65504, 3, -2};
  const std::vector<float> v = k;
  auto codec = MakeCodec(lay, 2, 32);
  ASSERT_NE(codec, nullptr);
  const RoundTrip rt = EncodeDecode(*codec, k, v, 2);
  for (size_t i = 0; i < k.size(); ++i) {
    EXPECT_TRUE(std::isfinite(rt.keys[i])) << i;
    EXPECT_TRUE(std::isfinite(rt.values[i])) << i;
  }
  ExpectWithinBounds(lay, 2, 2, 32, k, v, rt);
}

TEST(KiviCodecTest, EncodedBytesExactForAnyTokenCount) {
  // Hand-computed: L=1, H=1, D=64, G=32, 2 bits, 32 tokens: key params
  // 64 channels x 1 group x 4 B = 256; value params 32 tokens x 2 groups x
  // 4 B = 256; codes 2048 x 2 bits = 512 B each.
  auto small = MakeCodec(KvLayout{1, 1, 64}, 2, 32);
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(small->EncodedBytes(32), 256u + 256u + 512u + 512u);
  // Fewer tokens than G: still one key group per channel.
  EXPECT_EQ(small->EncodedBytes(5), 256u + 5 * 8u + 80u + 80u);

  const KvLayout lay{.layers = 3, .kv_heads = 2, .head_dim = 24};
  for (int bits : {2, 3, 4}) {
    for (int G : {5, 32}) {
      auto codec = MakeCodec(lay, bits, G);
      ASSERT_NE(codec, nullptr);
      for (int64_t T : {1, 4, 5, 6, 31, 33}) {
        const int64_t key_groups = (T + G - 1) / G;
        const int64_t value_groups = (24 + G - 1) / G;
        const size_t expected = 3 * key_groups * 2 * 24 * 4 +
                                3 * T * 2 * value_groups * 4 +
                                2 * PackedBytes(3 * T * 2 * 24, bits);
        EXPECT_EQ(codec->EncodedBytes(T), expected);
        // The encoder writes exactly that many bytes: it succeeds into a
        // buffer of that size and the decoder accepts exactly that size.
        const int64_t n = T * lay.ElementsPerToken();
        const auto k = RandomTensor(n, 1), v = RandomTensor(n, 2);
        std::vector<uint8_t> buf(expected + 16, 0xAB);
        ASSERT_TRUE(
            codec->Encode(k.data(), v.data(), T, buf.data(), expected).ok());
        for (size_t i = expected; i < buf.size(); ++i) ASSERT_EQ(buf[i], 0xAB);
        std::vector<float> k2(n), v2(n);
        EXPECT_TRUE(
            codec->Decode(buf.data(), expected, T, k2.data(), v2.data()).ok());
        EXPECT_EQ(
            codec->Decode(buf.data(), expected + 1, T, k2.data(), v2.data())
                .code(),
            kInvalid);
      }
    }
  }
}

TEST(KiviCodecTest, PayloadFollowsDocumentedLayout) {
  // The first key-param pair is the zero point and scale of channel 0 over
  // tokens [0, G); the first value-param pair covers channels [0, G) of the
  // first vector.
  const KvLayout lay{.layers = 1, .kv_heads = 1, .head_dim = 8};
  const int64_t T = 6;
  const auto k = RandomTensor(T * 8, 21), v = RandomTensor(T * 8, 22);
  auto codec = MakeCodec(lay, 2, 4);
  ASSERT_NE(codec, nullptr);
  std::vector<uint8_t> p(codec->EncodedBytes(T));
  ASSERT_TRUE(codec->Encode(k.data(), v.data(), T, p.data(), p.size()).ok());
  auto half_at = [&](size_t off) {
    return HalfToFloatRef(static_cast<uint16_t>(p[off] | (p[off + 1] << 8)));
  };
  float kmin = k[0];
  for (int t = 1; t < 4; ++t) kmin = std::min(kmin, k[t * 8]);
  EXPECT_EQ(half_at(0), HalfToFloatRef(FloatToHalfRef(kmin)));
  // Key params: 2 groups x 8 channels x 4 bytes = 64 bytes.
  const float vmin = *std::min_element(v.begin(), v.begin() + 4);
  EXPECT_EQ(half_at(64), HalfToFloatRef(FloatToHalfRef(vmin)));
  // Second key group of channel 0 starts at 8 channels x 4 bytes.
  float kmin2 = std::min(k[4 * 8], k[5 * 8]);
  EXPECT_EQ(half_at(32), HalfToFloatRef(FloatToHalfRef(kmin2)));
}

TEST(KiviCodecTest, BitsPerElementArithmetic) {
  auto a = MakeCodec(KvLayout{1, 1, 128}, 2, 32);
  EXPECT_DOUBLE_EQ(a->KeyBitsPerElement(), 3.0);
  EXPECT_DOUBLE_EQ(a->ValueBitsPerElement(), 3.0);
  EXPECT_DOUBLE_EQ(a->CompressionRatio(), 1.0 - 3.0 / 16.0);
  auto b = MakeCodec(KvLayout{1, 1, 64}, 4, 128);
  EXPECT_DOUBLE_EQ(b->KeyBitsPerElement(), 4.25);
  EXPECT_DOUBLE_EQ(b->ValueBitsPerElement(), 4.5);  // one group of 64
  auto c = MakeCodec(KvLayout{1, 1, 64}, 2, 48);
  EXPECT_DOUBLE_EQ(c->ValueBitsPerElement(), 3.0);  // groups of 48 and 16
  EXPECT_EQ(c->Descriptor(), "kivi:b=2:g=48");
  // For full key groups, the payload matches the advertised bits exactly.
  auto d = MakeCodec(KvLayout{2, 2, 64}, 2, 32);
  const int64_t T = 64, elems = T * 2 * 2 * 64;
  EXPECT_DOUBLE_EQ(d->EncodedBytes(T) * 8.0,
                   elems * (d->KeyBitsPerElement() + d->ValueBitsPerElement()));
}

TEST(KiviCodecTest, BadArguments) {
  const KvLayout lay{.layers = 1, .kv_heads = 2, .head_dim = 8};
  EXPECT_EQ(KiviCodec::Create(lay, {1, 32}).status().code(), kInvalid);
  EXPECT_EQ(KiviCodec::Create(lay, {9, 32}).status().code(), kInvalid);
  EXPECT_EQ(KiviCodec::Create(lay, {2, 0}).status().code(), kInvalid);
  EXPECT_EQ(KiviCodec::Create(lay, {2, 65536}).status().code(), kInvalid);
  EXPECT_EQ(KiviCodec::Create(KvLayout{1, 0, 8}, {2, 32}).status().code(),
            kInvalid);

  auto codec = MakeCodec(lay, 2, 32);
  ASSERT_NE(codec, nullptr);
  const int64_t T = 3, n = T * 16;
  std::vector<float> k = RandomTensor(n, 1), v = RandomTensor(n, 2);
  std::vector<uint8_t> out(codec->EncodedBytes(T));
  EXPECT_EQ(codec->Encode(k.data(), v.data(), 0, out.data(), out.size()).code(),
            kInvalid);
  EXPECT_EQ(
      codec->Encode(k.data(), v.data(), -1, out.data(), out.size()).code(),
      kInvalid);
  EXPECT_EQ(codec->Encode(k.data(), nullptr, T, out.data(), out.size()).code(),
            kInvalid);
  EXPECT_EQ(
      codec->Encode(k.data(), v.data(), T, out.data(), out.size() - 1).code(),
      kInvalid);
  EXPECT_EQ(codec->Encode(k.data(), v.data(), T, nullptr, out.size()).code(),
            kInvalid);
  for (float bad : {NAN, INFINITY, -1e6f}) {
    std::vector<float> kb = k;
    kb[7] = bad;
    EXPECT_EQ(
        codec->Encode(kb.data(), v.data(), T, out.data(), out.size()).code(),
        kInvalid)
        << bad;
    std::vector<float> vb = v;
    vb[9] = bad;
    EXPECT_EQ(
        codec->Encode(k.data(), vb.data(), T, out.data(), out.size()).code(),
        kInvalid)
        << bad;
  }
  ASSERT_TRUE(
      codec->Encode(k.data(), v.data(), T, out.data(), out.size()).ok());
  EXPECT_EQ(
      codec->Decode(out.data(), out.size() - 1, T, k.data(), v.data()).code(),
      kInvalid);
  EXPECT_EQ(
      codec->Decode(out.data(), out.size(), T + 1, k.data(), v.data()).code(),
      kInvalid);
  EXPECT_EQ(codec->Decode(nullptr, out.size(), T, k.data(), v.data()).code(),
            kInvalid);
  EXPECT_EQ(codec->Decode(out.data(), out.size(), 0, k.data(), v.data()).code(),
            kInvalid);
}

}  // namespace
}  // namespace vqkv
