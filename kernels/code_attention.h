// Code attention: softmax attention of a few queries over past tokens whose
// keys and values are held only as VqCodec codes (kernels/vq_codec.h),
// computed from the codes without decoding them to floats (docs/CODEC.md,
// "Attention over codes").
//
// Method. A key is the sum of one codeword per stage (over its RoPE groups,
// kernels/key_split.h), so q.k = sum over groups g and stages s of
// q[dims_g] . c_gs[code_gs]. Per query, one table per stage holds q against
// every codeword (scale included); a token's logit is then Nk table look-ups.
// A layer with a key refinement (CodebookSet::SetKeyRefinement) adds its R
// stages as one more group over all head_dim dimensions: Nk + R look-ups.
// With a key sketch (VqConfig::key_sketch_bits = m), the sketch adds
// scale_t * sum_b sign_tb (S q)_b, read from m/8 tables of 256 entries (one
// per sign byte), on the layers the codec sketches. Values: the softmax weights
// are summed per (stage, codeword), and the output is those sums times the
// value codebooks, once.
//
// Scope: one (layer, kv head) and the `group` query heads that share it
// (GQA); keys must have been coded after RoPE (with pre-RoPE codes the
// rotation depends on the key's position, so no table can be shared across
// tokens: Create returns kUnimplemented).
//
// Layouts: q float [group][head_dim]; token t's key codes are
// key_codes[t * key_stride + i], i in [0, key_stages()) (the codec's order:
// group 0's stages, then group 1's, then on a refined layer the
// refinement's), its value codes value_codes[t * value_stride + i],
// i in [0, Nv), its sketch sketch[t * sketch_stride + b], b in
// [0, SignSketch::BytesPerVector()). UnpackVqCodes gives these arrays for a
// payload: strides kv_heads * key_stages(), kv_heads * Nv, kv_heads *
// sketch bytes, offset by the head.
//
// Result: an AttentionPartial, the unnormalized softmax state, so the coded
// tokens can be merged with tokens attended elsewhere (exact sinks and
// window) by MergeAttentionPartial.
//
// Thread safety: a CodeAttention is immutable after Create; Attend may run
// concurrently with distinct scratch objects. It keeps pointers into the
// codec's codebooks: the codec must outlive it.
#ifndef VQKV_KERNELS_CODE_ATTENTION_H_
#define VQKV_KERNELS_CODE_ATTENTION_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/rvq.h"
#include "kernels/sign_sketch.h"
#include "kernels/vq_codec.h"

namespace vqkv {

// The coded tokens of one (layer, kv head). Pointers are not owned.
struct CodedTokens {
  int64_t n = 0;
  const uint16_t* key_codes = nullptr;
  int64_t key_stride = 0;  // uint16s between tokens
  const uint16_t* value_codes = nullptr;
  int64_t value_stride = 0;
  // Only when the codec has a key sketch; else ignored.
  const uint8_t* sketch = nullptr;
  int64_t sketch_stride = 0;  // bytes between tokens
};

// Softmax state of `group` query heads over a set of tokens, with logits
// x_t = scale * q.k_t: max[h] = max_t x_t, sum[h] = sum_t exp(x_t - max[h]),
// out[h][d] = sum_t exp(x_t - max[h]) v_t[d]. The attention output is
// out / sum. No tokens: max = -inf, sum = 0, out = 0.
struct AttentionPartial {
  int group = 0;
  int head_dim = 0;
  std::vector<float> max, sum;  // [group]
  std::vector<float> out;       // [group][head_dim]

  // Resets to the empty state for the given shape.
  void Reset(int group, int head_dim);
  // out / sum into y [group][head_dim] (zeros where sum == 0).
  void Normalize(float* y) const;
};

// a <- the state over the union of a's and b's tokens.
// Errors: kInvalidArgument when the shapes differ.
absl::Status MergeAttentionPartial(const AttentionPartial& b,
                                   AttentionPartial* a);

// Reusable buffers of Attend (allocated once per thread).
struct CodeAttentionScratch {
  std::vector<float> qg, key_lut, sketch_lut, proj, logits, weights;
};

class CodeAttention {
 public:
  // Code attention for layer `layer`, kv head `kv_head` of a fitted codec.
  // Errors: kInvalidArgument for an out-of-range layer or head;
  // kFailedPrecondition when the codec is not fitted; kUnimplemented when
  // its keys are coded before RoPE (CodebookConfig::keys_post_rope false).
  static absl::StatusOr<CodeAttention> Create(const VqCodec& codec, int layer,
                                              int kv_head);

  int head_dim() const { return head_dim_; }
  // Key codes per token: Nk, plus R on a refined layer.
  int key_stages() const { return key_stages_; }
  int value_stages() const { return values_->stages(); }
  // Sketch bytes per token; 0 without a sketch.
  size_t sketch_bytes() const {
    return sketch_ ? sketch_->BytesPerVector() : 0;
  }

  // The partial state of `group` queries q [group][head_dim] over `tokens`,
  // logits scale * q.k. tokens.n == 0 gives the empty state.
  // Errors: kInvalidArgument for group < 1, n < 0, null q / out / scratch,
  // null code arrays with n > 0, strides shorter than a token's codes, a
  // missing sketch when the codec has one, or a code >= the codebook size
  // (out is then unspecified).
  absl::Status Attend(const float* q, int group, float scale,
                      const CodedTokens& tokens, AttentionPartial* out,
                      CodeAttentionScratch* scratch) const;
  // Scalar reference, the definition of Attend's result: per token, logits
  // and weighted values summed codeword by codeword in double. Same errors.
  absl::Status AttendRef(const float* q, int group, float scale,
                         const CodedTokens& tokens,
                         AttentionPartial* out) const;

 private:
  struct KeyGroup {
    const ResidualQuantizer* q;
    std::vector<int> dims;
    int stage_offset;
  };
  CodeAttention() = default;
  absl::Status Check(const float* q, int group, const CodedTokens& tokens,
                     const AttentionPartial* out) const;

  int head_dim_ = 0;
  int key_stages_ = 0;
  std::vector<KeyGroup> key_groups_;
  const ResidualQuantizer* values_ = nullptr;
  const SignSketch* sketch_ = nullptr;  // owned by the codec
  // The key gain (CodebookSet::SetKeyGain): q.k = gain * q.codewords +
  // (1 - gain) * q.centre; 1 and null without gains.
  float key_gain_ = 1.0f;
  const float* key_centre_ = nullptr;  // owned by the codec's set
};

// Key codes per vector of `layer` as code attention reads them: Nk, plus
// the refinement's R stages when the layer is refined.
int VqKeyCodeStages(const VqCodec& codec, int layer);

// The codes of a VqCodec payload of `tokens` tokens, unpacked:
// keys uint16 [layer][token][kv_head][VqKeyCodeStages(layer)] (a refined
// layer's refinement codes after its key codes; key_begin[l] is where
// layer l starts, key_begin[layers] the size), values
// [layer][token][kv_head][Nv], sketch bytes [layer][token][kv_head][sketch
// bytes] for the sketched layers (VqCodec::KeySketchFirstLayer() on; empty
// without a sketch).
struct VqCodes {
  std::vector<uint16_t> keys, values;
  std::vector<size_t> key_begin;  // [layers + 1]
  std::vector<uint8_t> sketch;
};
// Errors: kInvalidArgument when in_bytes != codec.EncodedBytes(tokens).
absl::StatusOr<VqCodes> UnpackVqCodes(const VqCodec& codec, const uint8_t* in,
                                      size_t in_bytes, int64_t tokens);
// The CodedTokens of (layer, kv_head) in `codes` of `tokens` tokens.
CodedTokens CodedTokensOf(const VqCodec& codec, const VqCodes& codes,
                          int64_t tokens, int layer, int kv_head);

}  // namespace vqkv

#endif  // VQKV_KERNELS_CODE_ATTENTION_H_
