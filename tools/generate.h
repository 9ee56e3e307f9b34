// Greedy generation that reuses the KV of a prompt's cached prefix: the
// flow behind `vqkv generate` and bench/client_bench, on the CPU model
// runtime (model/) and the client library (client/cache_client.h).
//
//   1. Lookup the prompt: P cached tokens, capped so at least one prompt
//      token is prefilled (P <= prompt - 1, rounded down to a block).
//   2. Load those blocks (verified, decoded) and give them to a fresh exact
//      KV cache (ExactKvCache::AppendTokens): no forward pass over them.
//   3. Prefill the rest; the last row's logits give the first token (TTFT).
//   4. Store the prompt's full blocks the cache does not hold yet (their KV
//      read back from the exact cache).
//   5. Decode greedily until max_new_tokens or the stop token.
//
// Prefill chunks start at multiples of prefill_chunk (absolute positions).
// OpenBLAS sgemm results depend on the number of rows, so only a chunk grid
// shared by every run makes a cache hit bit-identical to a run without
// cache; a prefill_chunk that divides the block size guarantees it (P is a
// multiple of the block size).
//
// Thread safety: Generate may run concurrently on different clients.
#ifndef VQKV_TOOLS_GENERATE_H_
#define VQKV_TOOLS_GENERATE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/cache_client.h"
#include "model/llama_model.h"

namespace vqkv::tools {

enum class ReuseMode {
  // No cache: prefill the whole prompt (the reference).
  kNone,
  // Lookup, load, prefill the rest, store the new blocks.
  kCache,
  // The "in-memory" run: compute the KV of the first roundtrip_tokens
  // tokens exactly, Store them through the client and Load them back (the
  // client should have a fresh in-memory backend), then continue as a hit.
  kRoundtrip,
};

struct GenerateOptions {
  ReuseMode mode = ReuseMode::kCache;
  int64_t max_new_tokens = 32;
  int32_t stop_token = -1;  // -1: none
  std::string salt;
  // Tokens per prefill chunk; 0 = the client's block size (or 64 without a
  // client).
  int64_t prefill_chunk = 0;
  // kCache: store the prompt's new full blocks after the first token.
  bool store = true;
  // kRoundtrip: tokens sent through the codec, rounded down to a block and
  // capped like a hit; -1 = every full block the cap allows.
  int64_t roundtrip_tokens = -1;
  // Hand the model's KV cache back in GenerateResult::cache.
  bool keep_cache = false;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated, the stop token included
  int64_t prompt_tokens = 0;
  int64_t lookup_tokens = 0;  // what Lookup reported (before the cap)
  int64_t reused_tokens = 0;  // prompt tokens whose KV was loaded
  int64_t prefill_tokens = 0;
  int64_t blocks_loaded = 0;
  int64_t bytes_received = 0;       // encoded bytes loaded
  int64_t fp16_bytes_received = 0;  // their fp16 K+V equivalent
  int64_t blocks_stored = 0;
  int64_t blocks_already_present = 0;
  int64_t blocks_store_failed = 0;
  int64_t bytes_sent = 0;
  int64_t fp16_bytes_sent = 0;
  // Seconds. ttft = lookup + load + prefill (+ the roundtrip's exact
  // computation and codec pass in kRoundtrip).
  double lookup_seconds = 0;
  double load_seconds = 0;
  double prefill_seconds = 0;
  double ttft_seconds = 0;
  double store_seconds = 0;
  double decode_seconds = 0;  // tokens after the first
  int64_t decode_tokens = 0;
  // With GenerateOptions::keep_cache: the exact KV cache at the end (prompt
  // and generated tokens but the last one).
  std::unique_ptr<model::ExactKvCache> cache;
};

// Runs the flow above. `client` may be null only for ReuseMode::kNone.
// Errors: kInvalidArgument for an empty prompt, max_new_tokens < 1, a bad
// prefill_chunk, or a model whose KV layout is not the client's; model and
// client configuration errors. Cache faults are misses, not errors.
absl::StatusOr<GenerateResult> Generate(const model::LlamaModel& model,
                                        absl::Span<const int32_t> prompt,
                                        client::CacheClient* client,
                                        const GenerateOptions& options);

// fp16 bytes of the keys and values of `tokens` tokens of `layout`.
int64_t Fp16KvBytes(const KvLayout& layout, int64_t tokens);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_GENERATE_H_
