#include "tools/memory.h"

#include <algorithm>

namespace vqkv::tools {

int64_t Fp16BytesPerToken(const KvLayout& layout) {
  return 2 * 2 * layout.ElementsPerToken();
}

int64_t KvBytes(const Codec& codec, const KvMemoryPolicy& policy,
                int64_t tokens) {
  if (tokens <= 0) return 0;
  const int64_t fp16 = Fp16BytesPerToken(codec.layout());
  if (codec.id() == CodecId::kFp16) return tokens * fp16;
  const int64_t exact = std::min(tokens, policy.sinks + policy.window);
  const int64_t coded = tokens - exact;
  int64_t bytes = policy.codebook_bytes + exact * fp16;
  if (coded > 0) bytes += static_cast<int64_t>(codec.EncodedBytes(coded));
  return bytes;
}

int64_t MaxTokensInBudget(const Codec& codec, const KvMemoryPolicy& policy,
                          int64_t budget_bytes) {
  // KvBytes is non-decreasing in tokens: binary search the last fit.
  int64_t lo = 0;
  int64_t hi = 1;
  while (KvBytes(codec, policy, hi) <= budget_bytes) {
    lo = hi;
    if (hi > (int64_t{1} << 40)) return hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (KvBytes(codec, policy, mid) <= budget_bytes) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

}  // namespace vqkv::tools
