// Model-level measurements on token streams: perplexity in fixed windows,
// per-position log-probs and top-1 predictions, comparison of a test KV
// cache against a reference one (top-1 agreement, KL divergence), KV
// collection over text, and greedy generation.
//
// Windows: window w runs tokens[w*ctx, w*ctx + ctx) from position 0 in a
// fresh cache; the row at window position i predicts tokens[w*ctx + i + 1].
// Only rows i >= score_from are scored. With a CompressedKvCache,
// score_from = sinks + window + 1 scores exactly the rows whose query reads
// at least one decoded position (row t reads [sinks, t - window) decoded). A
// window is used only when all its ctx targets exist.
//
// Thread safety: the functions are reentrant; the model is only read.
#ifndef VQKV_EVAL_EVALUATE_H_
#define VQKV_EVAL_EVALUATE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "eval/compressed_kv_cache.h"
#include "eval/kv_collector.h"
#include "kernels/codec.h"
#include "model/kv_cache.h"
#include "model/llama_model.h"

namespace vqkv::eval {

// Makes a fresh, empty cache for one window.
using CacheFactory =
    std::function<absl::StatusOr<std::unique_ptr<model::KvCache>>()>;

// A factory of ExactKvCache for `model` (fp16-rounded).
CacheFactory ExactCacheFactory(const model::LlamaModel& model);

// A factory of CompressedKvCache over `codec` for `model` (its layout and
// RoPE). `model` and `codec` are not owned and must outlive the factory and
// its caches. Option errors surface from the first call, as
// CompressedKvCache::Create reports them.
CacheFactory CompressedCacheFactory(const model::LlamaModel& model,
                                    const Codec* codec,
                                    const CompressedKvCacheOptions& options);

struct WindowOptions {
  int64_t ctx = 512;
  int64_t score_from = 0;          // first scored row in each window
  int64_t max_windows = 0;         // 0 = as many as the text holds
  int64_t max_chunk_tokens = 512;  // forward chunk size
};

// Number of windows the options take from a stream of `tokens` tokens.
int64_t WindowCount(int64_t tokens, const WindowOptions& options);

struct PositionScore {
  float logprob = 0;  // log p(target)
  int32_t top1 = 0;   // argmax of the logits
};

// Scores rows [score_from, window.size() - 1) of one window: row i predicts
// window[i + 1]. `window` runs in `cache` (which must be empty).
absl::StatusOr<std::vector<PositionScore>> ScoreWindow(
    const model::LlamaModel& model, absl::Span<const int32_t> window,
    int64_t score_from, model::KvCache* cache);

struct PerplexityResult {
  double nll_sum = 0;  // natural log
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double ppl() const;
};

// Errors: kInvalidArgument when ctx < 1, score_from >= ctx or the text has
// fewer than ctx + 1 tokens; model and cache errors.
absl::StatusOr<PerplexityResult> Perplexity(const model::LlamaModel& model,
                                            absl::Span<const int32_t> tokens,
                                            const WindowOptions& options,
                                            const CacheFactory& make_cache);

// The same measures restricted to one window, so that callers can put an
// interval over windows (eval/stats.h); windows are disjoint text.
struct WindowCompare {
  int64_t tokens_scored = 0;
  double reference_nll_sum = 0;
  double test_nll_sum = 0;
  int64_t top1_agree = 0;
  double kl_sum = 0;
};

struct CompareResult {
  PerplexityResult reference;
  PerplexityResult test;
  int64_t tokens_scored = 0;
  double top1_agreement = 0;  // fraction of rows with equal argmax
  double mean_kl = 0;         // mean KL(p_reference || p_test), nats
  std::vector<WindowCompare> per_window;  // in window order
};

// Runs every window twice, in a reference cache and in a test cache, and
// compares the two next-token distributions row by row. Both runs use the
// same forward chunks (the smallest MaxChunkTokens of the two caches and
// options.max_chunk_tokens), so a lossless test cache reproduces the
// reference bit for bit.
absl::StatusOr<CompareResult> Compare(const model::LlamaModel& model,
                                      absl::Span<const int32_t> tokens,
                                      const WindowOptions& options,
                                      const CacheFactory& make_reference,
                                      const CacheFactory& make_test);

// Runs windows of `ctx` tokens through exact caches with `collector`
// attached (no logits computed) until the collector is full or the text
// ends. Returns the number of tokens run.
absl::StatusOr<int64_t> CollectKv(const model::LlamaModel& model,
                                  absl::Span<const int32_t> tokens, int64_t ctx,
                                  KvCollector* collector);

// Greedy decoding: runs `prompt` in `cache` (which must be empty), then
// appends up to max_new_tokens argmax tokens, stopping after stop_token
// (if >= 0). Returns the new tokens.
absl::StatusOr<std::vector<int32_t>> GenerateGreedy(
    const model::LlamaModel& model, absl::Span<const int32_t> prompt,
    int64_t max_new_tokens, int32_t stop_token, model::KvCache* cache);

// log-softmax of one row of `n` logits, in place; returns the argmax.
int32_t LogSoftmaxInPlace(float* logits, int64_t n);

}  // namespace vqkv::eval

#endif  // VQKV_EVAL_EVALUATE_H_
