#include "kernels/codec.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

namespace vqkv {

absl::Status KvLayout::Validate() const {
  auto in_range = [](int v) { return v >= 1 && v <= 65535; };
  if (!in_range(layers) || !in_range(kv_heads) || !in_range(head_dim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV layout must have 1..65535 layers, kv_heads and head_dim; got ",
        layers, " layers, ", kv_heads, " kv heads, head_dim ", head_dim));
  }
  return absl::OkStatus();
}

absl::Status CheckLayerRange(const KvLayout& layout, int first_layer,
                             int num_layers) {
  if (first_layer < 0 || num_layers < 1 ||
      first_layer > layout.layers - num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer range [", first_layer, ", ", int64_t{first_layer} + num_layers,
        ") is outside the ", layout.layers, " layers of the layout"));
  }
  return absl::OkStatus();
}

absl::Status Codec::EncodeMany(absl::Span<const EncodeRequest> requests) const {
  for (const EncodeRequest& r : requests) {
    if (absl::Status s = Encode(r.keys, r.values, r.tokens, r.out, r.out_bytes);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Codec::DecodeLayers(const uint8_t* in, size_t in_bytes,
                                 int64_t tokens, int first_layer,
                                 int num_layers, float* keys,
                                 float* values) const {
  const KvLayout& l = layout();
  if (absl::Status s = CheckLayerRange(l, first_layer, num_layers); !s.ok()) {
    return s;
  }
  if (first_layer == 0 && num_layers == l.layers) {
    return Decode(in, in_bytes, tokens, keys, values);
  }
  if (tokens < 1 || tokens > kMaxCodecTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DecodeLayers needs 1..", kMaxCodecTokens, " tokens, got ", tokens));
  }
  const size_t per_layer =
      static_cast<size_t>(tokens) * l.kv_heads * l.head_dim;
  std::vector<float> k(per_layer * l.layers), v(k.size());
  if (absl::Status s = Decode(in, in_bytes, tokens, k.data(), v.data());
      !s.ok()) {
    return s;
  }
  const size_t first = per_layer * first_layer;
  const size_t count = per_layer * num_layers;
  std::copy_n(k.data() + first, count, keys);
  std::copy_n(v.data() + first, count, values);
  return absl::OkStatus();
}

const char* CodecIdName(CodecId id) {
  switch (id) {
    case CodecId::kFp16:
      return "fp16";
    case CodecId::kVq:
      return "vq";
    case CodecId::kKivi:
      return "kivi";
  }
  return "unknown";
}

}  // namespace vqkv
