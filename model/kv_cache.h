// The KV cache seam between the LLaMA forward pass and the storage of past
// keys and values. Attention reads K/V only through KvCache::View, so an
// implementation can hand back exact copies (ExactKvCache) or, for some
// positions, copies read back through a codec (CompressedKvCache).
//
// Layout of every K/V array here: float32 [token][kv_head][head_dim] for one
// layer (the per-layer slice of the codec layout in kernels/codec.h). Keys in
// views are post-RoPE.
//
// Protocol for one forward chunk of n tokens at positions
// [tokens(), tokens() + n):
//   BeginChunk(n)                       // n <= MaxChunkTokens()
//   for layer in 0..layers-1: Append(layer, ...); View(layer) ...
//   EndChunk()                          // tokens() += n
// View(layer) covers the chunk's positions once Append(layer) has run.
//
// Thread safety: not thread-safe; one forward pass at a time.
#ifndef VQKV_MODEL_KV_CACHE_H_
#define VQKV_MODEL_KV_CACHE_H_

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "kernels/code_attention.h"
#include "kernels/codec.h"

namespace vqkv::model {

class KvCache {
 public:
  // What attention may read for one layer. A query at position t reads
  // position s <= t from decoded_* when ReadsDecoded(t, s), else from the
  // exact arrays.
  struct LayerView {
    int64_t tokens = 0;
    const float* keys = nullptr;    // exact, [tokens][kv_heads][head_dim]
    const float* values = nullptr;  // exact
    // Decoded copies (post-RoPE keys), same layout; rows [sinks,
    // decoded_end) are valid. nullptr when the cache keeps everything exact.
    const float* decoded_keys = nullptr;
    const float* decoded_values = nullptr;
    int64_t decoded_end = 0;
    int64_t sinks = 0;
    int64_t window = std::numeric_limits<int64_t>::max();

    // Attention over codes: when heads is not null, the decoded rows
    // [sinks, decoded_end) are read as VQ codes (kernels/code_attention.h)
    // instead of decoded_keys / decoded_values (which may then be null).
    // Row r of the codes is position sinks + r: key codes
    // key_codes[(r * kv_heads + h) * key_stages + i], values likewise,
    // sketch bytes sketch[(r * kv_heads + h) * sketch_bytes + b].
    struct CodedRows {
      const CodeAttention* heads = nullptr;  // [kv_heads], this layer's
      const uint16_t* key_codes = nullptr;
      const uint16_t* value_codes = nullptr;
      const uint8_t* sketch = nullptr;  // null without a key sketch
      int key_stages = 0;  // heads[h].key_stages(): refinement included
      int value_stages = 0;
      int sketch_bytes = 0;
    };
    CodedRows coded;

    // First position past the decoded range of a query at t: the query
    // reads [sinks, DecodedLimit(t)) decoded.
    int64_t DecodedLimit(int64_t t) const {
      if ((decoded_keys == nullptr && coded.heads == nullptr) ||
          t - sinks <= window) {
        return sinks;
      }
      return t - window;
    }
    bool ReadsDecoded(int64_t t, int64_t s) const {
      return s >= sinks && s < DecodedLimit(t);
    }
  };

  virtual ~KvCache() = default;

  virtual const KvLayout& layout() const = 0;
  // Positions committed by EndChunk so far.
  virtual int64_t tokens() const = 0;
  // Largest n a BeginChunk may ask for (policy constraints of compressed
  // caches; at least 1).
  virtual int64_t MaxChunkTokens() const {
    return std::numeric_limits<int64_t>::max();
  }

  // Errors: kInvalidArgument for n < 1 or n > MaxChunkTokens(),
  // kFailedPrecondition when a chunk is already open, or codec errors.
  virtual absl::Status BeginChunk(int64_t n) = 0;
  // Stores the current chunk's n tokens for `layer`. keys_pre_rope and keys
  // (post-RoPE) and values are [n][kv_heads][head_dim].
  // REQUIRES: a chunk is open; layers appended in order 0, 1, ...
  virtual absl::Status Append(int layer, const float* keys_pre_rope,
                              const float* keys, const float* values) = 0;
  // REQUIRES: Append(layer) ran for the open chunk, or no chunk is open.
  // The pointers stay valid until the next BeginChunk or Clear.
  virtual LayerView View(int layer) const = 0;
  virtual absl::Status EndChunk() = 0;
  // Forgets every position (tokens() becomes 0).
  virtual void Clear() = 0;
};

// Exact storage for all layers: what every cache keeps for recent tokens.
// With round_to_fp16, stored values are rounded through IEEE half precision,
// as a serving engine with an fp16 KV cache would hold them.
class ExactKvStore {
 public:
  ExactKvStore(const KvLayout& layout, bool round_to_fp16);

  const KvLayout& layout() const { return layout_; }
  int64_t tokens(int layer) const { return tokens_[layer]; }
  // Appends n tokens to `layer`. keys or values may be nullptr: that array
  // then grows by zeros.
  void Append(int layer, int64_t n, const float* keys, const float* values);
  const float* keys(int layer) const { return keys_[layer].data(); }
  const float* values(int layer) const { return values_[layer].data(); }
  float* mutable_keys(int layer) { return keys_[layer].data(); }
  float* mutable_values(int layer) { return values_[layer].data(); }
  // Grows `layer` to n tokens of zeros (for stores filled out of order).
  void Resize(int layer, int64_t n);
  void Clear();
  bool round_to_fp16() const { return round_to_fp16_; }

 private:
  KvLayout layout_;
  bool round_to_fp16_;
  std::vector<int64_t> tokens_;
  std::vector<std::vector<float>> keys_;
  std::vector<std::vector<float>> values_;
};

// The reference cache: every position exact (fp16-rounded by default).
class ExactKvCache : public KvCache {
 public:
  explicit ExactKvCache(const KvLayout& layout, bool round_to_fp16 = true);

  const KvLayout& layout() const override { return store_.layout(); }
  int64_t tokens() const override { return tokens_; }
  absl::Status BeginChunk(int64_t n) override;
  absl::Status Append(int layer, const float* keys_pre_rope, const float* keys,
                      const float* values) override;
  LayerView View(int layer) const override;
  absl::Status EndChunk() override;
  void Clear() override;

  // Appends n positions whose K/V were computed elsewhere (loaded from a KV
  // cache service, copied from another cache) without running the forward
  // pass: positions [tokens(), tokens() + n) of every layer, and tokens()
  // grows by n. keys (post-RoPE) and values are float32
  // [layer][n][kv_head][head_dim] (the codec layout, kernels/codec.h); they
  // are rounded to fp16 when the cache rounds, as Append does. A forward
  // pass that follows attends to them exactly as if it had computed them.
  // Errors: kInvalidArgument for n < 0 or null arrays with n > 0;
  // kFailedPrecondition while a chunk is open. n == 0 does nothing.
  absl::Status AppendTokens(int64_t n, const float* keys, const float* values);

  // Copies positions [begin, end) of every layer into keys/values, float32
  // [layer][end - begin][kv_head][head_dim] (post-RoPE keys): the layout
  // AppendTokens takes and CacheClient::Store expects.
  // Errors: kOutOfRange unless 0 <= begin <= end <= tokens();
  // kFailedPrecondition while a chunk is open.
  absl::Status ReadTokens(int64_t begin, int64_t end, float* keys,
                          float* values) const;

 private:
  ExactKvStore store_;
  int64_t tokens_ = 0;
  int64_t chunk_ = 0;  // open chunk length, 0 when none
};

// Rounds n floats through IEEE half precision in place.
void RoundToFp16(float* x, int64_t n);

}  // namespace vqkv::model

#endif  // VQKV_MODEL_KV_CACHE_H_
