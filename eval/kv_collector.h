// The KV hook: collects the keys (pre- or post-RoPE) and values of every
// layer and KV head while the model runs text, for codebook calibration and
// the codec bench.
//
// Output layout (as kernels/codec.h): float32 [layer][token][kv_head][head_dim]
// for keys and for values, tokens in the order they were run.
//
// Thread safety: not thread-safe; attach to one forward pass at a time.
#ifndef VQKV_EVAL_KV_COLLECTOR_H_
#define VQKV_EVAL_KV_COLLECTOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/codec.h"
#include "model/llama_model.h"

namespace vqkv::eval {

struct KvCollectorOptions {
  int64_t max_tokens = 1 << 16;  // stop collecting after this many tokens
  bool keys_pre_rope = false;    // collect raw keys instead of rotated ones
  // Positions below this (within each run, e.g. the attention sinks at the
  // start of every window) are not collected.
  int64_t skip_positions_below = 0;
  // Layers collected; empty = all. The others are ignored (their buffers
  // stay empty), so a study of a few layers does not hold all of them.
  std::vector<int> layers;
  // Called with tokens() after the last collected layer of each forward
  // chunk (a progress bar); may be empty.
  std::function<void(int64_t tokens)> progress;
};

class KvCollector : public model::KvObserver {
 public:
  KvCollector(const KvLayout& layout, const KvCollectorOptions& options);

  void OnKv(int layer, int64_t pos0, int64_t n, const float* keys_pre_rope,
            const float* keys, const float* values) override;

  // Tokens collected in every collected layer so far.
  int64_t tokens() const;
  bool full() const { return tokens() >= options_.max_tokens; }
  const KvLayout& layout() const { return layout_; }
  const KvCollectorOptions& options() const { return options_; }

  // One layer's collection, [tokens][kv_head][head_dim] (it may hold more
  // tokens than tokens() while a forward pass is between layers).
  const std::vector<float>& layer_keys(int layer) const { return keys_[layer]; }
  const std::vector<float>& layer_values(int layer) const {
    return values_[layer];
  }

  // Moves the collection out as [layer][tokens()][kv_head][head_dim] and
  // empties the collector (a layer not collected contributes no rows).
  // Per-layer buffers are released as they are copied, so peak memory stays
  // near one copy.
  void Take(std::vector<float>* keys, std::vector<float>* values);

 private:
  bool collects(int layer) const;

  KvLayout layout_;
  KvCollectorOptions options_;
  int last_layer_ = -1;
  std::vector<std::vector<float>> keys_;
  std::vector<std::vector<float>> values_;
};

}  // namespace vqkv::eval

#endif  // VQKV_EVAL_KV_COLLECTOR_H_
