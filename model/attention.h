// Causal grouped-query attention over a KvCache::LayerView, honouring the
// view's exact/decoded split per query position.
//
// Thread safety: the function is reentrant; scratch must not be shared
// between concurrent calls.
#ifndef VQKV_MODEL_ATTENTION_H_
#define VQKV_MODEL_ATTENTION_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "model/kv_cache.h"

namespace vqkv::model {

struct AttentionShape {
  int heads = 0;     // query heads
  int kv_heads = 0;  // REQUIRES: heads % kv_heads == 0
  int head_dim = 0;
};

// Reusable buffers, so a forward pass allocates them once.
struct AttentionScratch {
  std::vector<float> q, scores, out, merged_k, merged_v;
  std::vector<char> key_differs, value_differs;
  // Attention over codes (view.coded).
  AttentionPartial coded_part, exact_part;
  CodeAttentionScratch code_scratch;
};

// q: post-RoPE queries [n][heads][head_dim] at positions pos0 .. pos0+n-1.
// out: [n][heads][head_dim]. The query at t attends to positions [0, t],
// reading position s from the view's decoded arrays when
// view.ReadsDecoded(t, s), from the exact arrays otherwise. When the view
// carries codes (view.coded.heads), the decoded positions are attended from
// the codes (CodeAttention, one query at a time) and merged with the exact
// positions' softmax state; otherwise query tiles go through sgemm.
// Errors: kInvalidArgument when the view holds fewer than pos0 + n tokens,
// kFailedPrecondition when a needed decoded row is not available; code
// attention's errors.
absl::Status CausalAttention(const float* q, int64_t n, int64_t pos0,
                             const AttentionShape& shape,
                             const KvCache::LayerView& view, float* out,
                             AttentionScratch* scratch);

}  // namespace vqkv::model

#endif  // VQKV_MODEL_ATTENTION_H_
