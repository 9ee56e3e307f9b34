#include "kernels/baselines/fp16_codec.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/baselines/baseline_args.h"
#include "kernels/fp16.h"

namespace vqkv {

using baselines_internal::CheckTensorArgs;

absl::StatusOr<std::unique_ptr<Fp16Codec>> Fp16Codec::Create(
    const KvLayout& layout) {
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  return std::unique_ptr<Fp16Codec>(new Fp16Codec(layout));
}

size_t Fp16Codec::EncodedBytes(int64_t tokens) const {
  if (tokens < 0 || tokens > kMaxCodecTokens) return 0;
  return static_cast<size_t>(tokens * layout_.ElementsPerToken()) * 2 * 2;
}

absl::Status Fp16Codec::Fit(const float* keys, const float* values,
                            int64_t tokens, const FitOptions& /*options*/) {
  return CheckTensorArgs("Fp16Codec::Fit", keys, values, tokens);
}

absl::Status Fp16Codec::Encode(const float* keys, const float* values,
                               int64_t tokens, uint8_t* out,
                               size_t out_bytes) const {
  if (absl::Status s =
          CheckTensorArgs("Fp16Codec::Encode", keys, values, tokens);
      !s.ok()) {
    return s;
  }
  const size_t need = EncodedBytes(tokens);
  if (out == nullptr || out_bytes < need) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Fp16Codec::Encode: output holds ", out_bytes, " bytes, needs ", need));
  }
  const size_t n = static_cast<size_t>(tokens * layout_.ElementsPerToken());
  // The payload is little-endian binary16; on a little-endian host that is
  // the in-memory uint16 layout, so convert straight into the output. The
  // output may be unaligned, hence the bounce through a small buffer.
  uint16_t buf[1024];
  auto convert = [&](const float* src, uint8_t* dst) {
    for (size_t i = 0; i < n; i += 1024) {
      const size_t m = n - i < 1024 ? n - i : 1024;
      FloatToHalf(src + i, m, buf);
      std::memcpy(dst + 2 * i, buf, 2 * m);
    }
  };
  convert(keys, out);
  convert(values, out + 2 * n);
  return absl::OkStatus();
}

absl::Status Fp16Codec::Decode(const uint8_t* in, size_t in_bytes,
                               int64_t tokens, float* keys,
                               float* values) const {
  return DecodeLayers(in, in_bytes, tokens, 0, layout_.layers, keys, values);
}

absl::Status Fp16Codec::DecodeLayers(const uint8_t* in, size_t in_bytes,
                                     int64_t tokens, int first_layer,
                                     int num_layers, float* keys,
                                     float* values) const {
  if (absl::Status s =
          CheckTensorArgs("Fp16Codec::Decode", keys, values, tokens);
      !s.ok()) {
    return s;
  }
  const size_t need = EncodedBytes(tokens);
  if (in == nullptr || in_bytes != need) {
    return absl::InvalidArgumentError(
        absl::StrCat("Fp16Codec::Decode: payload has ", in_bytes,
                     " bytes, expected ", need, " for ", tokens, " tokens"));
  }
  if (absl::Status s = CheckLayerRange(layout_, first_layer, num_layers);
      !s.ok()) {
    return s;
  }
  // Each section is [layer][token][kv_head][dim]: a layer range is a slice.
  const size_t all = static_cast<size_t>(tokens * layout_.ElementsPerToken());
  const size_t per_layer = all / layout_.layers;
  const size_t first = per_layer * first_layer;
  const size_t n = per_layer * num_layers;
  uint16_t buf[1024];
  auto convert = [&](const uint8_t* src, float* dst) {
    for (size_t i = 0; i < n; i += 1024) {
      const size_t m = n - i < 1024 ? n - i : 1024;
      std::memcpy(buf, src + 2 * i, 2 * m);
      HalfToFloat(buf, m, dst + i);
    }
  };
  convert(in + 2 * first, keys);
  convert(in + 2 * (all + first), values);
  return absl::OkStatus();
}

}  // namespace vqkv
