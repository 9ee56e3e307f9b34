#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/fp16.h"

namespace vqkv::model {

void RoundToFp16(float* x, int64_t n) {
  constexpr int64_t kStep = 1024;
  uint16_t h[kStep];
  for (int64_t i = 0; i < n; i += kStep) {
    const size_t m = static_cast<size_t>(std::min(kStep, n - i));
    FloatToHalf(x + i, m, h);
    HalfToFloat(h, m, x + i);
  }
}

ExactKvStore::ExactKvStore(const KvLayout& layout, bool round_to_fp16)
    : layout_(layout),
      round_to_fp16_(round_to_fp16),
      tokens_(static_cast<size_t>(layout.layers), 0),
      keys_(static_cast<size_t>(layout.layers)),
      values_(static_cast<size_t>(layout.layers)) {}

void ExactKvStore::Resize(int layer, int64_t n) {
  const size_t row = static_cast<size_t>(layout_.kv_heads) * layout_.head_dim;
  keys_[layer].resize(static_cast<size_t>(n) * row);
  values_[layer].resize(static_cast<size_t>(n) * row);
  tokens_[layer] = n;
}

void ExactKvStore::Append(int layer, int64_t n, const float* keys,
                          const float* values) {
  const int64_t row = int64_t{layout_.kv_heads} * layout_.head_dim;
  const int64_t old = tokens_[layer];
  Resize(layer, old + n);
  const auto put = [&](std::vector<float>& dst, const float* src) {
    if (src == nullptr) return;
    float* p = dst.data() + old * row;
    std::memcpy(p, src, static_cast<size_t>(n * row) * sizeof(float));
    if (round_to_fp16_) RoundToFp16(p, n * row);
  };
  put(keys_[layer], keys);
  put(values_[layer], values);
}

void ExactKvStore::Clear() {
  for (int l = 0; l < layout_.layers; ++l) {
    keys_[l].clear();
    values_[l].clear();
    tokens_[l] = 0;
  }
}

ExactKvCache::ExactKvCache(const KvLayout& layout, bool round_to_fp16)
    : store_(layout, round_to_fp16) {}

absl::Status ExactKvCache::BeginChunk(int64_t n) {
  if (chunk_ != 0) return absl::FailedPreconditionError("chunk already open");
  if (n < 1) {
    return absl::InvalidArgumentError(absl::StrCat("chunk of ", n, " tokens"));
  }
  chunk_ = n;
  return absl::OkStatus();
}

absl::Status ExactKvCache::Append(int layer, const float* /*keys_pre_rope*/,
                                  const float* keys, const float* values) {
  if (chunk_ == 0) return absl::FailedPreconditionError("no open chunk");
  if (layer < 0 || layer >= store_.layout().layers ||
      store_.tokens(layer) != tokens_ ||
      (layer > 0 && store_.tokens(layer - 1) != tokens_ + chunk_)) {
    return absl::FailedPreconditionError(
        absl::StrCat("Append of layer ", layer, " out of order"));
  }
  store_.Append(layer, chunk_, keys, values);
  return absl::OkStatus();
}

KvCache::LayerView ExactKvCache::View(int layer) const {
  LayerView v;
  v.tokens = store_.tokens(layer);
  v.keys = store_.keys(layer);
  v.values = store_.values(layer);
  return v;
}

absl::Status ExactKvCache::EndChunk() {
  if (chunk_ == 0) return absl::FailedPreconditionError("no open chunk");
  for (int l = 0; l < store_.layout().layers; ++l) {
    if (store_.tokens(l) != tokens_ + chunk_) {
      return absl::FailedPreconditionError(
          absl::StrCat("EndChunk before layer ", l, " was appended"));
    }
  }
  tokens_ += chunk_;
  chunk_ = 0;
  return absl::OkStatus();
}

absl::Status ExactKvCache::AppendTokens(int64_t n, const float* keys,
                                        const float* values) {
  if (chunk_ != 0) {
    return absl::FailedPreconditionError("AppendTokens while a chunk is open");
  }
  if (n < 0 || (n > 0 && (keys == nullptr || values == nullptr))) {
    return absl::InvalidArgumentError(
        absl::StrCat("AppendTokens of ", n, " tokens without arrays"));
  }
  if (n == 0) return absl::OkStatus();
  const KvLayout& lay = store_.layout();
  const int64_t layer_floats = n * lay.kv_heads * lay.head_dim;
  for (int l = 0; l < lay.layers; ++l) {
    store_.Append(l, n, keys + l * layer_floats, values + l * layer_floats);
  }
  tokens_ += n;
  return absl::OkStatus();
}

absl::Status ExactKvCache::ReadTokens(int64_t begin, int64_t end, float* keys,
                                      float* values) const {
  if (chunk_ != 0) {
    return absl::FailedPreconditionError("ReadTokens while a chunk is open");
  }
  if (begin < 0 || begin > end || end > tokens_) {
    return absl::OutOfRangeError(absl::StrCat("ReadTokens [", begin, ", ", end,
                                              ") of a cache of ", tokens_,
                                              " tokens"));
  }
  const KvLayout& lay = store_.layout();
  const int64_t row = int64_t{lay.kv_heads} * lay.head_dim;
  const int64_t n = end - begin;
  const size_t bytes = static_cast<size_t>(n * row) * sizeof(float);
  if (bytes == 0) return absl::OkStatus();
  for (int l = 0; l < lay.layers; ++l) {
    std::memcpy(keys + l * n * row, store_.keys(l) + begin * row, bytes);
    std::memcpy(values + l * n * row, store_.values(l) + begin * row, bytes);
  }
  return absl::OkStatus();
}

void ExactKvCache::Clear() {
  store_.Clear();
  tokens_ = 0;
  chunk_ = 0;
}

}  // namespace vqkv::model
