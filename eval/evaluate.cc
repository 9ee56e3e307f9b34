#include "eval/evaluate.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace vqkv::eval {
namespace {

// Rows of logits computed at once: bounds the logits buffer to
// kRowBlock * vocab floats.
constexpr int64_t kRowBlock = 32;

absl::Status CheckWindows(int64_t tokens, const WindowOptions& o) {
  if (o.ctx < 1 || o.score_from < 0 || o.score_from >= o.ctx) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad window options: ctx ", o.ctx, ", score_from ", o.score_from));
  }
  if (tokens < o.ctx + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("text has ", tokens, " tokens; a window of ctx ", o.ctx,
                     " needs at least ", o.ctx + 1));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> RunHidden(const model::LlamaModel& model,
                                             absl::Span<const int32_t> inputs,
                                             int64_t max_chunk,
                                             model::KvCache* cache) {
  if (cache->tokens() != 0) {
    return absl::FailedPreconditionError("window cache is not empty");
  }
  model::ForwardOptions fo;
  fo.output = model::OutputRows::kAll;
  fo.max_chunk_tokens = max_chunk;
  std::vector<float> hidden;
  if (absl::Status s = model.Forward(inputs, cache, fo, &hidden); !s.ok()) {
    return s;
  }
  return hidden;
}

}  // namespace

CacheFactory ExactCacheFactory(const model::LlamaModel& model) {
  const KvLayout layout = model.config().kv_layout();
  return [layout]() -> absl::StatusOr<std::unique_ptr<model::KvCache>> {
    return std::make_unique<model::ExactKvCache>(layout);
  };
}

CacheFactory CompressedCacheFactory(const model::LlamaModel& model,
                                    const Codec* codec,
                                    const CompressedKvCacheOptions& options) {
  const model::LlamaModel* m = &model;
  return
      [m, codec, options]() -> absl::StatusOr<std::unique_ptr<model::KvCache>> {
        absl::StatusOr<std::unique_ptr<CompressedKvCache>> cache =
            CompressedKvCache::Create(m->config().kv_layout(), codec,
                                      &m->rope(), options);
        if (!cache.ok()) return cache.status();
        return std::unique_ptr<model::KvCache>(*std::move(cache));
      };
}

int64_t WindowCount(int64_t tokens, const WindowOptions& o) {
  if (o.ctx < 1 || tokens < o.ctx + 1) return 0;
  int64_t n = (tokens - 1) / o.ctx;
  if (o.max_windows > 0) n = std::min(n, o.max_windows);
  return n;
}

double PerplexityResult::ppl() const {
  return tokens_scored > 0 ? std::exp(nll_sum / tokens_scored) : 0.0;
}

int32_t LogSoftmaxInPlace(float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  const float mx = logits[best];
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double{logits[i] - mx});
  const float lse = mx + static_cast<float>(std::log(sum));
  for (int64_t i = 0; i < n; ++i) logits[i] -= lse;
  return static_cast<int32_t>(best);
}

absl::StatusOr<std::vector<PositionScore>> ScoreWindow(
    const model::LlamaModel& model, absl::Span<const int32_t> window,
    int64_t score_from, model::KvCache* cache) {
  const int64_t n = static_cast<int64_t>(window.size()) - 1;
  if (n < 1 || score_from < 0 || score_from >= n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "window of ", window.size(), " tokens, score_from ", score_from));
  }
  absl::StatusOr<std::vector<float>> hidden =
      RunHidden(model, window.first(n), 512, cache);
  if (!hidden.ok()) return hidden.status();
  const int64_t vocab = model.config().vocab;
  const int64_t d = model.config().embd;
  std::vector<float> logits(static_cast<size_t>(kRowBlock * vocab));
  std::vector<PositionScore> out;
  out.reserve(static_cast<size_t>(n - score_from));
  for (int64_t r0 = score_from; r0 < n; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, n - r0);
    model.Logits(hidden->data() + r0 * d, rows, logits.data());
    for (int64_t r = 0; r < rows; ++r) {
      float* row = logits.data() + r * vocab;
      PositionScore ps;
      ps.top1 = LogSoftmaxInPlace(row, vocab);
      ps.logprob = row[window[r0 + r + 1]];
      out.push_back(ps);
    }
  }
  return out;
}

absl::StatusOr<PerplexityResult> Perplexity(const model::LlamaModel& model,
                                            absl::Span<const int32_t> tokens,
                                            const WindowOptions& options,
                                            const CacheFactory& make_cache) {
  const int64_t total = static_cast<int64_t>(tokens.size());
  if (absl::Status s = CheckWindows(total, options); !s.ok()) return s;
  PerplexityResult result;
  const int64_t windows = WindowCount(total, options);
  for (int64_t w = 0; w < windows; ++w) {
    absl::StatusOr<std::unique_ptr<model::KvCache>> cache = make_cache();
    if (!cache.ok()) return cache.status();
    absl::StatusOr<std::vector<float>> hidden =
        RunHidden(model, tokens.subspan(w * options.ctx, options.ctx),
                  options.max_chunk_tokens, cache->get());
    if (!hidden.ok()) return hidden.status();
    const int64_t vocab = model.config().vocab;
    const int64_t d = model.config().embd;
    std::vector<float> logits(static_cast<size_t>(kRowBlock * vocab));
    for (int64_t r0 = options.score_from; r0 < options.ctx; r0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, options.ctx - r0);
      model.Logits(hidden->data() + r0 * d, rows, logits.data());
      for (int64_t r = 0; r < rows; ++r) {
        float* row = logits.data() + r * vocab;
        LogSoftmaxInPlace(row, vocab);
        result.nll_sum -= row[tokens[w * options.ctx + r0 + r + 1]];
        ++result.tokens_scored;
      }
    }
    ++result.windows;
  }
  return result;
}

absl::StatusOr<CompareResult> Compare(const model::LlamaModel& model,
                                      absl::Span<const int32_t> tokens,
                                      const WindowOptions& options,
                                      const CacheFactory& make_reference,
                                      const CacheFactory& make_test) {
  const int64_t total = static_cast<int64_t>(tokens.size());
  if (absl::Status s = CheckWindows(total, options); !s.ok()) return s;
  CompareResult result;
  const int64_t vocab = model.config().vocab;
  const int64_t d = model.config().embd;
  std::vector<float> lr(static_cast<size_t>(kRowBlock * vocab));
  std::vector<float> lt(lr.size());
  int64_t agree = 0;
  double kl_sum = 0.0;
  const int64_t windows = WindowCount(total, options);
  for (int64_t w = 0; w < windows; ++w) {
    const absl::Span<const int32_t> inputs =
        tokens.subspan(w * options.ctx, options.ctx);
    std::unique_ptr<model::KvCache> caches[2];
    const CacheFactory* factories[2] = {&make_reference, &make_test};
    // Both runs use the same forward chunks, so a lossless test cache gives
    // bit-identical results instead of differing by summation order.
    int64_t chunk = options.max_chunk_tokens;
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::unique_ptr<model::KvCache>> cache = (*factories[i])();
      if (!cache.ok()) return cache.status();
      caches[i] = *std::move(cache);
      chunk = std::min(chunk, caches[i]->MaxChunkTokens());
    }
    std::vector<float> hidden[2];
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::vector<float>> h =
          RunHidden(model, inputs, chunk, caches[i].get());
      if (!h.ok()) return h.status();
      hidden[i] = *std::move(h);
    }
    WindowCompare win;
    for (int64_t r0 = options.score_from; r0 < options.ctx; r0 += kRowBlock) {
      const int64_t rows = std::min(kRowBlock, options.ctx - r0);
      model.Logits(hidden[0].data() + r0 * d, rows, lr.data());
      model.Logits(hidden[1].data() + r0 * d, rows, lt.data());
      for (int64_t r = 0; r < rows; ++r) {
        float* a = lr.data() + r * vocab;
        float* b = lt.data() + r * vocab;
        const int32_t top_a = LogSoftmaxInPlace(a, vocab);
        const int32_t top_b = LogSoftmaxInPlace(b, vocab);
        const int32_t target = tokens[w * options.ctx + r0 + r + 1];
        win.reference_nll_sum -= a[target];
        win.test_nll_sum -= b[target];
        win.top1_agree += top_a == top_b ? 1 : 0;
        double kl = 0.0;
        for (int64_t j = 0; j < vocab; ++j) {
          kl += std::exp(double{a[j]}) * (double{a[j]} - double{b[j]});
        }
        win.kl_sum += std::max(kl, 0.0);
        ++win.tokens_scored;
      }
    }
    result.reference.nll_sum += win.reference_nll_sum;
    result.test.nll_sum += win.test_nll_sum;
    agree += win.top1_agree;
    kl_sum += win.kl_sum;
    result.tokens_scored += win.tokens_scored;
    result.per_window.push_back(win);
    ++result.reference.windows;
    ++result.test.windows;
  }
  result.reference.tokens_scored = result.tokens_scored;
  result.test.tokens_scored = result.tokens_scored;
  if (result.tokens_scored > 0) {
    result.top1_agreement =
        static_cast<double>(agree) / static_cast<double>(result.tokens_scored);
    result.mean_kl = kl_sum / static_cast<double>(result.tokens_scored);
  }
  return result;
}

absl::StatusOr<int64_t> CollectKv(const model::LlamaModel& model,
                                  absl::Span<const int32_t> tokens, int64_t ctx,
                                  KvCollector* collector) {
  if (ctx < 1) return absl::InvalidArgumentError("ctx must be >= 1");
  if (!(collector->layout() == model.config().kv_layout())) {
    return absl::InvalidArgumentError(
        "collector layout does not match the model");
  }
  const int64_t total = static_cast<int64_t>(tokens.size());
  const int64_t skip =
      std::max<int64_t>(0, collector->options().skip_positions_below);
  model::ExactKvCache cache(model.config().kv_layout());
  model::ForwardOptions fo;
  fo.output = model::OutputRows::kNone;
  fo.observer = collector;
  int64_t run = 0;
  for (int64_t start = 0; start < total && !collector->full(); start += ctx) {
    const int64_t needed =
        collector->options().max_tokens - collector->tokens() + skip;
    const int64_t n = std::min({ctx, total - start, needed});
    cache.Clear();
    if (absl::Status s =
            model.Forward(tokens.subspan(start, n), &cache, fo, nullptr);
        !s.ok()) {
      return s;
    }
    run += n;
  }
  return run;
}

absl::StatusOr<std::vector<int32_t>> GenerateGreedy(
    const model::LlamaModel& model, absl::Span<const int32_t> prompt,
    int64_t max_new_tokens, int32_t stop_token, model::KvCache* cache) {
  if (prompt.empty()) return absl::InvalidArgumentError("empty prompt");
  if (cache->tokens() != 0) {
    return absl::FailedPreconditionError("generation cache is not empty");
  }
  model::ForwardOptions fo;
  fo.output = model::OutputRows::kLast;
  std::vector<float> hidden;
  std::vector<float> logits(static_cast<size_t>(model.config().vocab));
  std::vector<int32_t> out;
  std::vector<int32_t> next(prompt.begin(), prompt.end());
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    if (absl::Status s = model.Forward(next, cache, fo, &hidden); !s.ok()) {
      return s;
    }
    model.Logits(hidden.data(), 1, logits.data());
    const int32_t tok = static_cast<int32_t>(
        std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(tok);
    if (tok == stop_token) break;
    next.assign(1, tok);
  }
  return out;
}

}  // namespace vqkv::eval
