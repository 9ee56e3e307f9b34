// A KV cache with VQKV's policy: the first `sinks` positions and the most
// recent `window` positions are read exact (fp16), every other past position
// is read back through a vqkv::Codec.
//
// Precisely: a query at position t reads position s decoded iff
//   sinks <= s < t - window,
// and exact otherwise (KvCache::LayerView::ReadsDecoded). The cache keeps
// both the exact copy of every position and, for coded positions, the
// codec's reconstruction; this makes the per-query split exact even inside a
// batched prefill chunk, where different queries see different splits.
//
// Coding: positions from `sinks` on are coded in blocks of block_tokens
// consecutive positions, all layers at once (one Codec::Encode over a
// [layer][block_tokens][kv_head][head_dim] block, then Decode). A block is
// coded lazily, when the first query that must read it decoded is about to
// run, so blocks still inside the window are never coded. Coded blocks are
// complete: forward chunks are capped (MaxChunkTokens) so that every block a
// chunk's queries read decoded was filled by earlier chunks.
//
// Keys: by default the post-RoPE keys are coded. With keys_pre_rope, the raw
// (pre-RoPE) keys are coded and RoPE is applied to the decoded keys.
//
// With attend_codes, a coded block is kept as its VQ codes only, and
// attention reads coded positions from the codes (model/attention.h).
//
// Thread safety: not thread-safe (see KvCache). The codec is only used
// through its const methods and may be shared with other caches.
#ifndef VQKV_EVAL_COMPRESSED_KV_CACHE_H_
#define VQKV_EVAL_COMPRESSED_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/code_attention.h"
#include "kernels/codec.h"
#include "kernels/rope.h"
#include "kernels/vq_codec.h"
#include "model/kv_cache.h"

namespace vqkv::eval {

// Which parts of the cache a compressed cache reads through the codec, so
// that a loss can be traced to keys or values and to a range of layers; the
// rest is read exact. The default codes everything.
struct CodedParts {
  static constexpr int kAllLayers = 1 << 16;

  bool keys = true;
  bool values = true;
  int layers_begin = 0;
  int layers_end = kAllLayers;  // exclusive; clamped to the layer count

  bool everything(int layers) const {
    return keys && values && layers_begin <= 0 && layers_end >= layers;
  }
  bool keys_in(int layer) const {
    return keys && layer >= layers_begin && layer < layers_end;
  }
  bool values_in(int layer) const {
    return values && layer >= layers_begin && layer < layers_end;
  }
};

// Parses what `vqkv eval --coded` and `--coded-layers` take: parts "all",
// "keys" or "values"; layers "" (all) or "B-E" (inclusive, 0-based).
// Errors: kInvalidArgument naming the bad value.
absl::StatusOr<CodedParts> ParseCodedParts(const std::string& parts,
                                           const std::string& layers);

// "all", or e.g. "values, layers 0-9" (the inverse of ParseCodedParts).
std::string DescribeCodedParts(const CodedParts& c);

struct CompressedKvCacheOptions {
  int64_t sinks = 4;
  int64_t window = 1024;
  // Positions per Encode call. REQUIRES: 1 <= block_tokens <= window + 1.
  int64_t block_tokens = 32;
  // Code raw keys and rotate after decoding (needs a Rope).
  bool keys_pre_rope = false;
  // Round the exact copies (and what the codec is given) to fp16.
  bool round_to_fp16 = true;
  // Ablation (vqkv eval --coded, --coded-layers, --task diagnose): the parts
  // left out are read exact even where the policy says decoded.
  CodedParts coded;
  // Attention over codes: keep each coded block as its unpacked VQ codes
  // (no decoded copy) and let attention read the coded positions from them
  // (KvCache::LayerView::coded, kernels/code_attention.h). Needs a VqCodec
  // whose keys are coded after RoPE (so keys_pre_rope false), and no
  // diagnostic ablation (code_keys, code_values, all layers).
  bool attend_codes = false;
};

class CompressedKvCache : public model::KvCache {
 public:
  // `codec` and `rope` are not owned and must outlive the cache; rope may be
  // null unless keys_pre_rope. Errors: kInvalidArgument for bad options, a
  // missing rope, or a codec whose layout differs from `layout`, or
  // attend_codes with a codec other than a fitted VqCodec, keys_pre_rope or
  // an ablation; kUnimplemented for attend_codes with codebooks of pre-RoPE
  // keys.
  static absl::StatusOr<std::unique_ptr<CompressedKvCache>> Create(
      const KvLayout& layout, const Codec* codec, const Rope* rope,
      const CompressedKvCacheOptions& options);

  const KvLayout& layout() const override { return exact_.layout(); }
  int64_t tokens() const override { return tokens_; }
  // window + 2 - block_tokens: the largest chunk whose queries only read
  // decoded positions from blocks completed before the chunk.
  int64_t MaxChunkTokens() const override;
  absl::Status BeginChunk(int64_t n) override;
  absl::Status Append(int layer, const float* keys_pre_rope, const float* keys,
                      const float* values) override;
  LayerView View(int layer) const override;
  absl::Status EndChunk() override;
  void Clear() override;

  const CompressedKvCacheOptions& options() const { return options_; }
  // Positions coded so far (from sinks on), and their payload bytes.
  int64_t coded_tokens() const { return coded_end_ - options_.sinks; }
  uint64_t encoded_bytes() const { return encoded_bytes_; }

 private:
  CompressedKvCache(const KvLayout& layout, const Codec* codec,
                    const Rope* rope, const CompressedKvCacheOptions& options);
  absl::Status CodeBlock();

  const Codec* codec_;
  const Rope* rope_;
  CompressedKvCacheOptions options_;
  model::ExactKvStore exact_;
  model::ExactKvStore
      raw_keys_;  // pre-RoPE keys (values unused); keys_pre_rope only
  model::ExactKvStore
      decoded_;  // rows [0, coded_end_); rows below sinks unused
  int64_t tokens_ = 0;
  int64_t chunk_ = 0;
  int64_t coded_end_;  // positions [sinks, coded_end_) are coded
  uint64_t encoded_bytes_ = 0;
  std::vector<float> block_keys_, block_values_;
  std::vector<uint8_t> payload_;
  // attend_codes only: [layer][kv_head] kernels, and per layer the codes of
  // positions [sinks, coded_end_) as [position][kv_head][stages].
  const VqCodec* vq_ = nullptr;
  std::vector<CodeAttention> code_heads_;
  std::vector<std::vector<uint16_t>> key_codes_, value_codes_;
  std::vector<std::vector<uint8_t>> sketch_codes_;
};

}  // namespace vqkv::eval

#endif  // VQKV_EVAL_COMPRESSED_KV_CACHE_H_
