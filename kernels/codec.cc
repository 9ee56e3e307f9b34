#include "kernels/codec.h"

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
