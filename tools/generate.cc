#include "tools/generate.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace vqkv::tools {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int32_t Argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) -
                              logits.begin());
}

// Runs `tokens` at positions cache->tokens() onward in chunks that start at
// multiples of `chunk`; `logits` gets the last row's.
absl::Status Prefill(const model::LlamaModel& model,
                     absl::Span<const int32_t> tokens, int64_t chunk,
                     model::ExactKvCache* cache, std::vector<float>* logits) {
  model::ForwardOptions fo;
  fo.max_chunk_tokens = chunk;
  std::vector<float> hidden;
  size_t done = 0;
  while (done < tokens.size()) {
    // Up to the next chunk boundary first, then whole chunks.
    const int64_t to_boundary = chunk - cache->tokens() % chunk;
    const size_t n =
        to_boundary == chunk
            ? tokens.size() - done
            : std::min(tokens.size() - done, static_cast<size_t>(to_boundary));
    const bool last = done + n == tokens.size();
    fo.output = last ? model::OutputRows::kLast : model::OutputRows::kNone;
    absl::Status s = model.Forward(tokens.subspan(done, n), cache, fo,
                                   last ? &hidden : nullptr);
    if (!s.ok()) return s;
    done += n;
  }
  logits->resize(static_cast<size_t>(model.config().vocab));
  model.Logits(hidden.data(), 1, logits->data());
  return absl::OkStatus();
}

// Loads tokens [0, n) of `prompt` through `client` into `cache` (which is
// empty). Returns the tokens loaded and fills the load counters.
absl::StatusOr<int64_t> LoadPrefix(client::CacheClient& client,
                                   absl::Span<const int32_t> prompt, int64_t n,
                                   const std::string& salt,
                                   model::ExactKvCache* cache,
                                   GenerateResult* r) {
  const KvLayout& layout = client.layout();
  const int64_t row = int64_t{layout.kv_heads} * layout.head_dim;
  std::vector<float> k(static_cast<size_t>(layout.layers * n * row));
  std::vector<float> v(k.size());
  absl::StatusOr<client::LoadResult> got = client.Load(
      prompt.first(static_cast<size_t>(n)), salt, k.data(), v.data());
  if (!got.ok()) return got.status();
  const int64_t loaded = got->tokens;
  if (loaded > 0 && loaded < n) {
    // Load wrote [layer][n][...]; AppendTokens takes [layer][loaded][...].
    for (int l = 1; l < layout.layers; ++l) {
      std::memmove(k.data() + l * loaded * row, k.data() + l * n * row,
                   sizeof(float) * static_cast<size_t>(loaded * row));
      std::memmove(v.data() + l * loaded * row, v.data() + l * n * row,
                   sizeof(float) * static_cast<size_t>(loaded * row));
    }
  }
  absl::Status s = cache->AppendTokens(loaded, k.data(), v.data());
  if (!s.ok()) return s;
  r->blocks_loaded += got->blocks;
  r->bytes_received += got->bytes_received;
  r->fp16_bytes_received += Fp16KvBytes(layout, loaded);
  return loaded;
}

// Stores the full blocks of prompt[0, n) whose KV is in `cache`.
absl::Status StorePrefix(client::CacheClient& client,
                         absl::Span<const int32_t> prompt, int64_t n,
                         const std::string& salt,
                         const model::ExactKvCache& cache, GenerateResult* r) {
  if (n <= 0) return absl::OkStatus();
  const KvLayout& layout = client.layout();
  const int64_t row = int64_t{layout.kv_heads} * layout.head_dim;
  std::vector<float> k(static_cast<size_t>(layout.layers * n * row));
  std::vector<float> v(k.size());
  absl::Status s = cache.ReadTokens(0, n, k.data(), v.data());
  if (!s.ok()) return s;
  absl::StatusOr<client::StoreResult> put = client.Store(
      prompt.first(static_cast<size_t>(n)), salt, k.data(), v.data());
  if (!put.ok()) return put.status();
  r->blocks_stored += put->stored;
  r->blocks_already_present += put->already_present;
  r->blocks_store_failed += put->failed;
  r->bytes_sent += put->bytes_sent;
  r->fp16_bytes_sent +=
      Fp16KvBytes(layout, put->stored * client.block_tokens());
  return absl::OkStatus();
}

}  // namespace

int64_t Fp16KvBytes(const KvLayout& layout, int64_t tokens) {
  return tokens * 2 * layout.ElementsPerToken() * 2;
}

absl::StatusOr<GenerateResult> Generate(const model::LlamaModel& model,
                                        absl::Span<const int32_t> prompt,
                                        client::CacheClient* client,
                                        const GenerateOptions& o) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (o.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_new_tokens must be at least 1, got ", o.max_new_tokens));
  }
  if (o.mode != ReuseMode::kNone) {
    if (client == nullptr) {
      return absl::InvalidArgumentError("a cache run needs a client");
    }
    if (!(client->layout() == model.config().kv_layout())) {
      return absl::InvalidArgumentError(
          "the client's codec was made for another model layout");
    }
  }
  const int64_t block = client != nullptr ? client->block_tokens() : 64;
  const int64_t chunk = o.prefill_chunk > 0 ? o.prefill_chunk : block;
  if (o.prefill_chunk < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefill_chunk must be >= 0, got ", o.prefill_chunk));
  }
  GenerateResult r;
  const int64_t n = static_cast<int64_t>(prompt.size());
  r.prompt_tokens = n;
  // At least one prompt token is prefilled: its logits give the first token.
  const int64_t cap = (n - 1) / block * block;
  std::unique_ptr<model::ExactKvCache> cache = model.NewExactCache();

  // Loads the first `want` tokens' blocks into `cache`, timed.
  auto load = [&](int64_t want) -> absl::Status {
    const Clock::time_point t1 = Clock::now();
    VQKV_ASSIGN_OR_RETURN(r.reused_tokens, LoadPrefix(*client, prompt, want,
                                                      o.salt, cache.get(), &r));
    r.load_seconds = Since(t1);
    return absl::OkStatus();
  };

  const Clock::time_point t0 = Clock::now();
  if (o.mode == ReuseMode::kCache) {
    absl::StatusOr<int64_t> found = client->Lookup(prompt, o.salt);
    if (!found.ok()) return found.status();
    r.lookup_tokens = *found;
    r.lookup_seconds = Since(t0);
    const int64_t want = std::min(*found, cap);
    if (want > 0) VQKV_RETURN_IF_ERROR(load(want));
  } else if (o.mode == ReuseMode::kRoundtrip) {
    int64_t want = cap;
    if (o.roundtrip_tokens >= 0) {
      want = std::min(cap, o.roundtrip_tokens / block * block);
    }
    if (want > 0) {
      // The exact KV of the blocks, on the same chunk grid as a producer
      // that prefilled the whole prompt.
      std::unique_ptr<model::ExactKvCache> exact = model.NewExactCache();
      std::vector<float> unused;
      absl::Status s = Prefill(model, prompt.first(static_cast<size_t>(want)),
                               chunk, exact.get(), &unused);
      if (!s.ok()) return s;
      s = StorePrefix(*client, prompt, want, o.salt, *exact, &r);
      if (!s.ok()) return s;
      r.lookup_tokens = want;
      VQKV_RETURN_IF_ERROR(load(want));
    }
  }

  const Clock::time_point tp = Clock::now();
  std::vector<float> logits;
  absl::Status s =
      Prefill(model, prompt.subspan(static_cast<size_t>(r.reused_tokens)),
              chunk, cache.get(), &logits);
  if (!s.ok()) return s;
  r.prefill_tokens = n - r.reused_tokens;
  r.prefill_seconds = Since(tp);
  r.tokens.push_back(Argmax(logits));
  r.ttft_seconds = Since(t0);

  if (o.mode == ReuseMode::kCache && o.store) {
    const Clock::time_point ts = Clock::now();
    s = StorePrefix(*client, prompt, n / block * block, o.salt, *cache, &r);
    if (!s.ok()) return s;
    r.store_seconds = Since(ts);
  }

  const Clock::time_point td = Clock::now();
  model::ForwardOptions fo;
  fo.output = model::OutputRows::kLast;
  std::vector<float> hidden;
  while (static_cast<int64_t>(r.tokens.size()) < o.max_new_tokens &&
         r.tokens.back() != o.stop_token) {
    const int32_t last = r.tokens.back();
    s = model.Forward(absl::MakeConstSpan(&last, 1), cache.get(), fo, &hidden);
    if (!s.ok()) return s;
    model.Logits(hidden.data(), 1, logits.data());
    r.tokens.push_back(Argmax(logits));
    ++r.decode_tokens;
  }
  r.decode_seconds = Since(td);
  if (o.keep_cache) r.cache = std::move(cache);
  return r;
}

}  // namespace vqkv::tools
