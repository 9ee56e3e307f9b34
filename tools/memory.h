// The KV memory account of a compressed cache: what `tokens` tokens of
// context cost in bytes, with the sinks and the recent window kept in fp16,
// the older tokens in the codec's payload, and the codebook set (shared by
// every sequence, so amortized over the tokens it serves).
#ifndef VQKV_TOOLS_MEMORY_H_
#define VQKV_TOOLS_MEMORY_H_

#include <cstdint>

#include "kernels/codec.h"

namespace vqkv::tools {

struct KvMemoryPolicy {
  int64_t sinks = 4;
  int64_t window = 1024;
  int64_t codebook_bytes = 0;  // counted once
};

// fp16 K and V bytes of one token over all layers and heads.
int64_t Fp16BytesPerToken(const KvLayout& layout);

// Bytes of a `tokens`-token context: codebooks + fp16 for the first
// min(tokens, sinks + window) tokens + codec.EncodedBytes(rest).
// For the fp16 codec the whole context is fp16 and codebook_bytes is 0.
int64_t KvBytes(const Codec& codec, const KvMemoryPolicy& policy,
                int64_t tokens);

// The longest context (in tokens) whose KvBytes fits `budget_bytes`;
// 0 when not even one token fits.
int64_t MaxTokensInBudget(const Codec& codec, const KvMemoryPolicy& policy,
                          int64_t budget_bytes);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_MEMORY_H_
