#include "kernels/baselines/kivi_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/baselines/baseline_args.h"
#include "kernels/bitpack.h"
#include "kernels/fp16.h"

namespace vqkv {
namespace {

using baselines_internal::CheckTensorArgs;

constexpr float kHalfMax = 65504.0f;

void StoreHalf(uint8_t* p, uint16_t h) {
  p[0] = static_cast<uint8_t>(h & 0xff);
  p[1] = static_cast<uint8_t>(h >> 8);
}
uint16_t LoadHalf(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

// Zero point and scale of one group, as stored (binary16) and as used.
struct GroupParams {
  uint16_t z_half;
  uint16_t s_half;
  float z;
  float s;
  float inv_s;  // 0 when s == 0, so every element quantizes to 0
};

// Smallest binary16 >= v, for finite v > 0 that fits in binary16.
uint16_t HalfRoundUp(float v) {
  uint16_t h = FloatToHalfRef(v);
  if (HalfToFloatRef(h) < v) ++h;  // next larger positive half
  return h;
}

GroupParams MakeParams(float mn, float mx, int qmax) {
  GroupParams p;
  p.z_half = FloatToHalfRef(mn);
  p.z = HalfToFloatRef(p.z_half);
  const float range = mx - p.z;
  if (range > 0.0f) {
    p.s_half = HalfRoundUp(range / static_cast<float>(qmax));
    p.s = HalfToFloatRef(p.s_half);
    p.inv_s = 1.0f / p.s;
  } else {
    p.s_half = 0;
    p.s = 0.0f;
    p.inv_s = 0.0f;
  }
  return p;
}

inline uint16_t Quantize(float x, const GroupParams& p, float qmax) {
  float q = std::nearbyint((x - p.z) * p.inv_s);
  q = std::clamp(q, 0.0f, qmax);
  return static_cast<uint16_t>(q);
}

absl::Status OutOfRange(const char* which, float v) {
  return absl::InvalidArgumentError(
      absl::StrCat("KiviCodec::Encode: ", which, " contain ", v,
                   ", outside the finite binary16 range [-65504, 65504]"));
}

inline bool InHalfRange(float v) { return v >= -kHalfMax && v <= kHalfMax; }

}  // namespace

absl::StatusOr<std::unique_ptr<KiviCodec>> KiviCodec::Create(
    const KvLayout& layout, const KiviOptions& options) {
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  if (options.bits < 2 || options.bits > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("KiviCodec: bits must be in 2..8, got ", options.bits));
  }
  if (options.group_size < 1 || options.group_size > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KiviCodec: group_size must be in 1..65535, got ", options.group_size));
  }
  return std::unique_ptr<KiviCodec>(new KiviCodec(layout, options));
}

std::string KiviCodec::Descriptor() const {
  return absl::StrCat("kivi:b=", options_.bits, ":g=", options_.group_size);
}

int64_t KiviCodec::KeyGroups(int64_t tokens) const {
  return (tokens + options_.group_size - 1) / options_.group_size;
}

int64_t KiviCodec::ValueGroupsPerVector() const {
  return (layout_.head_dim + options_.group_size - 1) / options_.group_size;
}

double KiviCodec::KeyBitsPerElement() const {
  return options_.bits + 32.0 / options_.group_size;
}

double KiviCodec::ValueBitsPerElement() const {
  return options_.bits +
         32.0 * static_cast<double>(ValueGroupsPerVector()) / layout_.head_dim;
}

size_t KiviCodec::EncodedBytes(int64_t tokens) const {
  if (tokens < 0 || tokens > kMaxCodecTokens) return 0;
  const int64_t L = layout_.layers, H = layout_.kv_heads, D = layout_.head_dim;
  const int64_t key_params = L * KeyGroups(tokens) * H * D * 4;
  const int64_t value_params = L * tokens * H * ValueGroupsPerVector() * 4;
  const size_t codes = PackedBytes(L * tokens * H * D, options_.bits);
  return static_cast<size_t>(key_params + value_params) + 2 * codes;
}

absl::Status KiviCodec::Fit(const float* keys, const float* values,
                            int64_t tokens, const FitOptions& /*options*/) {
  return CheckTensorArgs("KiviCodec::Fit", keys, values, tokens);
}

absl::Status KiviCodec::Encode(const float* keys, const float* values,
                               int64_t tokens, uint8_t* out,
                               size_t out_bytes) const {
  if (absl::Status s =
          CheckTensorArgs("KiviCodec::Encode", keys, values, tokens);
      !s.ok()) {
    return s;
  }
  const size_t need = EncodedBytes(tokens);
  if (out == nullptr || out_bytes < need) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KiviCodec::Encode: output holds ", out_bytes, " bytes, needs ", need));
  }
  const int64_t L = layout_.layers, T = tokens, H = layout_.kv_heads,
                D = layout_.head_dim, G = options_.group_size;
  const int64_t HD = H * D, n = L * T * HD;
  const int qmax_i = (1 << options_.bits) - 1;
  const float qmax = static_cast<float>(qmax_i);
  const int64_t gk = KeyGroups(T), gv = ValueGroupsPerVector();

  uint8_t* key_params = out;
  uint8_t* value_params = key_params + L * gk * HD * 4;
  uint8_t* key_codes_out = value_params + L * T * H * gv * 4;
  const size_t code_bytes = PackedBytes(n, options_.bits);
  uint8_t* value_codes_out = key_codes_out + code_bytes;
  std::vector<uint16_t> codes(static_cast<size_t>(n));

  // Keys, per channel: a group is G consecutive tokens of one channel.
  std::vector<float> mn(HD), mx(HD);
  std::vector<GroupParams> params(HD);
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t g = 0; g < gk; ++g) {
      const int64_t t0 = g * G, t1 = std::min(T, t0 + G);
      std::fill(mn.begin(), mn.end(), kHalfMax);
      std::fill(mx.begin(), mx.end(), -kHalfMax);
      for (int64_t t = t0; t < t1; ++t) {
        const float* row = keys + (l * T + t) * HD;
        for (int64_t e = 0; e < HD; ++e) {
          const float v = row[e];
          if (!InHalfRange(v)) return OutOfRange("keys", v);
          mn[e] = std::min(mn[e], v);
          mx[e] = std::max(mx[e], v);
        }
      }
      uint8_t* pk = key_params + (l * gk + g) * HD * 4;
      for (int64_t e = 0; e < HD; ++e) {
        params[e] = MakeParams(mn[e], mx[e], qmax_i);
        StoreHalf(pk + 4 * e, params[e].z_half);
        StoreHalf(pk + 4 * e + 2, params[e].s_half);
      }
      for (int64_t t = t0; t < t1; ++t) {
        const float* row = keys + (l * T + t) * HD;
        uint16_t* q = codes.data() + (l * T + t) * HD;
        for (int64_t e = 0; e < HD; ++e)
          q[e] = Quantize(row[e], params[e], qmax);
      }
    }
  }
  if (absl::Status s =
          PackBits(codes.data(), n, options_.bits, key_codes_out, code_bytes);
      !s.ok()) {
    return s;
  }

  // Values, per token: a group is G consecutive channels of one vector.
  const int64_t vectors = L * T * H;
  for (int64_t r = 0; r < vectors; ++r) {
    const float* vec = values + r * D;
    uint16_t* q = codes.data() + r * D;
    uint8_t* pv = value_params + r * gv * 4;
    for (int64_t g = 0; g < gv; ++g) {
      const int64_t c0 = g * G, c1 = std::min(D, c0 + G);
      float lo = kHalfMax, hi = -kHalfMax;
      for (int64_t c = c0; c < c1; ++c) {
        const float v = vec[c];
        if (!InHalfRange(v)) return OutOfRange("values", v);
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      const GroupParams p = MakeParams(lo, hi, qmax_i);
      StoreHalf(pv + 4 * g, p.z_half);
      StoreHalf(pv + 4 * g + 2, p.s_half);
      for (int64_t c = c0; c < c1; ++c) q[c] = Quantize(vec[c], p, qmax);
    }
  }
  return PackBits(codes.data(), n, options_.bits, value_codes_out, code_bytes);
}

absl::Status KiviCodec::Decode(const uint8_t* in, size_t in_bytes,
                               int64_t tokens, float* keys,
                               float* values) const {
  if (absl::Status s =
          CheckTensorArgs("KiviCodec::Decode", keys, values, tokens);
      !s.ok()) {
    return s;
  }
  const size_t need = EncodedBytes(tokens);
  if (in == nullptr || in_bytes != need) {
    return absl::InvalidArgumentError(
        absl::StrCat("KiviCodec::Decode: payload has ", in_bytes,
                     " bytes, expected ", need, " for ", tokens, " tokens"));
  }
  const int64_t L = layout_.layers, T = tokens, H = layout_.kv_heads,
                D = layout_.head_dim, G = options_.group_size;
  const int64_t HD = H * D, n = L * T * HD;
  const int64_t gk = KeyGroups(T), gv = ValueGroupsPerVector();
  const uint8_t* key_params = in;
  const uint8_t* value_params = key_params + L * gk * HD * 4;
  const uint8_t* key_codes_in = value_params + L * T * H * gv * 4;
  const size_t code_bytes = PackedBytes(n, options_.bits);
  const uint8_t* value_codes_in = key_codes_in + code_bytes;
  std::vector<uint16_t> codes(static_cast<size_t>(n));

  if (absl::Status s =
          UnpackBits(key_codes_in, code_bytes, n, options_.bits, codes.data());
      !s.ok()) {
    return s;
  }
  std::vector<float> z(HD), s(HD);
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t g = 0; g < gk; ++g) {
      const uint8_t* pk = key_params + (l * gk + g) * HD * 4;
      for (int64_t e = 0; e < HD; ++e) {
        z[e] = HalfToFloatRef(LoadHalf(pk + 4 * e));
        s[e] = HalfToFloatRef(LoadHalf(pk + 4 * e + 2));
      }
      const int64_t t0 = g * G, t1 = std::min(T, t0 + G);
      for (int64_t t = t0; t < t1; ++t) {
        const uint16_t* q = codes.data() + (l * T + t) * HD;
        float* row = keys + (l * T + t) * HD;
        for (int64_t e = 0; e < HD; ++e) row[e] = q[e] * s[e] + z[e];
      }
    }
  }

  if (absl::Status st = UnpackBits(value_codes_in, code_bytes, n, options_.bits,
                                   codes.data());
      !st.ok()) {
    return st;
  }
  const int64_t vectors = L * T * H;
  for (int64_t r = 0; r < vectors; ++r) {
    const uint16_t* q = codes.data() + r * D;
    const uint8_t* pv = value_params + r * gv * 4;
    float* vec = values + r * D;
    for (int64_t g = 0; g < gv; ++g) {
      const float zg = HalfToFloatRef(LoadHalf(pv + 4 * g));
      const float sg = HalfToFloatRef(LoadHalf(pv + 4 * g + 2));
      const int64_t c0 = g * G, c1 = std::min(D, c0 + G);
      for (int64_t c = c0; c < c1; ++c) vec[c] = q[c] * sg + zg;
    }
  }
  return absl::OkStatus();
}

}  // namespace vqkv
