#include "eval/kv_collector.h"

#include <algorithm>

namespace vqkv::eval {

KvCollector::KvCollector(const KvLayout& layout,
                         const KvCollectorOptions& options)
    : layout_(layout),
      options_(options),
      keys_(static_cast<size_t>(layout.layers)),
      values_(static_cast<size_t>(layout.layers)) {
  for (int layer = 0; layer < layout_.layers; ++layer) {
    if (collects(layer)) last_layer_ = layer;
  }
}

void KvCollector::OnKv(int layer, int64_t pos0, int64_t n,
                       const float* keys_pre_rope, const float* keys,
                       const float* values) {
  if (layer < 0 || layer >= layout_.layers || !collects(layer)) return;
  const int64_t row = int64_t{layout_.kv_heads} * layout_.head_dim;
  std::vector<float>& kd = keys_[layer];
  std::vector<float>& vd = values_[layer];
  const int64_t have = static_cast<int64_t>(kd.size()) / row;
  const int64_t skip =
      std::clamp<int64_t>(options_.skip_positions_below - pos0, 0, n);
  const int64_t take = std::min(n - skip, options_.max_tokens - have);
  if (take <= 0) return;
  if (kd.capacity() == 0) {
    // Untouched reserved pages cost no memory, and the buffers never move.
    kd.reserve(static_cast<size_t>(options_.max_tokens * row));
    vd.reserve(static_cast<size_t>(options_.max_tokens * row));
  }
  const float* k = (options_.keys_pre_rope ? keys_pre_rope : keys) + skip * row;
  const float* v = values + skip * row;
  kd.insert(kd.end(), k, k + take * row);
  vd.insert(vd.end(), v, v + take * row);
  if (options_.progress && layer == last_layer_) options_.progress(tokens());
}

int64_t KvCollector::tokens() const {
  const int64_t row = int64_t{layout_.kv_heads} * layout_.head_dim;
  int64_t t = options_.max_tokens;
  for (int layer = 0; layer < layout_.layers; ++layer) {
    if (!collects(layer)) continue;
    t = std::min(t, static_cast<int64_t>(keys_[layer].size()) / row);
  }
  return t;
}

bool KvCollector::collects(int layer) const {
  return options_.layers.empty() ||
         std::find(options_.layers.begin(), options_.layers.end(), layer) !=
             options_.layers.end();
}

void KvCollector::Take(std::vector<float>* keys, std::vector<float>* values) {
  const int64_t row = int64_t{layout_.kv_heads} * layout_.head_dim;
  const int64_t t = tokens();
  const size_t per_layer = static_cast<size_t>(t * row);
  const auto gather = [&](std::vector<std::vector<float>>& src,
                          std::vector<float>* dst) {
    dst->clear();
    dst->reserve(per_layer * layout_.layers);
    for (std::vector<float>& layer : src) {
      if (layer.empty()) continue;
      dst->insert(dst->end(), layer.begin(), layer.begin() + per_layer);
      std::vector<float>().swap(layer);
    }
  };
  gather(keys_, keys);
  gather(values_, values);
}

}  // namespace vqkv::eval
