// LLaMA-architecture forward pass on the CPU (float32 weights dequantized
// from GGUF at load, OpenBLAS sgemm over batches of tokens): token
// embedding, RMSNorm, RoPE, grouped-query attention through a KvCache,
// SwiGLU MLP, final RMSNorm, tied or separate output head.
//
// Thread safety: a LlamaModel is immutable after loading. Forward is const
// and may run concurrently on different caches (each call allocates its own
// scratch); OpenBLAS parallelizes each sgemm internally.
#ifndef VQKV_MODEL_LLAMA_MODEL_H_
#define VQKV_MODEL_LLAMA_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/codec.h"
#include "kernels/rope.h"
#include "model/gguf.h"
#include "model/kv_cache.h"

namespace vqkv::model {

struct LlamaConfig {
  std::string name;  // general.name
  int layers = 0;
  int embd = 0;
  int ff = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int vocab = 0;
  int rope_dims = 0;
  double rope_theta = 10000.0;
  float rms_eps = 1e-5f;
  int64_t context_length = 0;
  bool tied_output = false;

  KvLayout kv_layout() const { return KvLayout{layers, kv_heads, head_dim}; }
  // GGUF LLaMA rotates adjacent dimension pairs (kernels/rope.h).
  RopeSpec rope_spec() const {
    return RopeSpec{rope_theta, rope_dims, RopePairs::kAdjacent};
  }
};

// Receives every layer's K/V as the forward pass computes them (the KV
// hook for calibration and the codec bench). Called once per (chunk, layer)
// in order; arrays are [n][kv_heads][head_dim] and only valid during the
// call. Keys are given before and after RoPE.
class KvObserver {
 public:
  virtual ~KvObserver() = default;
  virtual void OnKv(int layer, int64_t pos0, int64_t n,
                    const float* keys_pre_rope, const float* keys,
                    const float* values) = 0;
  // The layer's queries after RoPE, [n][heads][head_dim], called after OnKv
  // (for attention diagnostics and query-aware calibration).
  virtual void OnQueries(int layer, int64_t pos0, int64_t n,
                         const float* queries) {
    (void)layer, (void)pos0, (void)n, (void)queries;
  }
};

enum class OutputRows {
  kNone,  // no hidden states (KV collection only)
  kLast,  // the last token's
  kAll,   // one per input token
};

struct ForwardOptions {
  OutputRows output = OutputRows::kAll;
  KvObserver* observer = nullptr;  // not owned; may be null
  // Tokens per forward chunk (one sgemm batch); the cache may lower it.
  int64_t max_chunk_tokens = 512;
};

class LlamaModel {
 public:
  // Errors: those of GgufFile::Open and ReadTensorF32; kUnimplemented for
  // an architecture other than "llama"; kInvalidArgument for missing or
  // inconsistent hyperparameters or tensor shapes.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(
      const std::string& path);
  static absl::StatusOr<std::unique_ptr<LlamaModel>> FromGguf(
      const GgufFile& gguf);

  const LlamaConfig& config() const { return config_; }
  const Rope& rope() const { return rope_; }

  // A fresh exact cache for this model (fp16-rounded unless told not to).
  std::unique_ptr<ExactKvCache> NewExactCache(bool round_to_fp16 = true) const;

  // Runs `tokens` at positions cache->tokens() onward, appending their K/V
  // to the cache. On success `hidden` (if not null) holds the final-normed
  // hidden states [rows][embd] of the rows options.output asks for.
  // Errors: kInvalidArgument for empty input or token ids outside the
  // vocabulary, cache errors. After an error the cache is in an unspecified
  // state: Clear() it before reuse.
  absl::Status Forward(absl::Span<const int32_t> tokens, KvCache* cache,
                       const ForwardOptions& options,
                       std::vector<float>* hidden) const;

  // logits[rows][vocab] = hidden[rows][embd] . output^T.
  void Logits(const float* hidden, int64_t rows, float* logits) const;

 private:
  struct Layer {
    std::vector<float> attn_norm;  // [embd]
    std::vector<float> wqkv;       // [embd + 2*kv_dim][embd]: q, k, v rows
    std::vector<float> wo;         // [embd][heads*head_dim]
    std::vector<float> ffn_norm;   // [embd]
    std::vector<float> w_gate_up;  // [2*ff][embd]: gate rows, then up rows
    std::vector<float> w_down;     // [embd][ff]
  };

  LlamaModel(const LlamaConfig& config);
  absl::Status ForwardChunk(const int32_t* tokens, int64_t n, int64_t pos0,
                            KvCache* cache, const ForwardOptions& options,
                            std::vector<float>* x) const;
  void RmsNorm(const float* x, const float* w, int64_t rows, float* y) const;

  LlamaConfig config_;
  Rope rope_;
  std::vector<float> token_embd_;  // [vocab][embd]
  std::vector<float> output_;      // [vocab][embd]; empty when tied
  std::vector<float> output_norm_;
  std::vector<Layer> layers_;
};

}  // namespace vqkv::model

#endif  // VQKV_MODEL_LLAMA_MODEL_H_
