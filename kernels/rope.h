// Rotary position embedding (RoPE) of key and query head vectors, and its
// inverse. The model runtime rotates queries and keys with it; the client
// library un-rotates the post-RoPE keys an engine caches before coding them
// with codebooks fitted on pre-RoPE keys, and rotates decoded keys back
// (docs/CODEC.md, "Key position"), so codes never depend on position.
//
// Pair i (0 <= i < rot_dims/2) of a head vector rotates by the angle
// pos * theta^(-2i/rot_dims): low i fast, high i slowly. Which two
// dimensions form pair i is the layout (RopePairs); dimensions past
// rot_dims pass through.
//
// Thread safety: RopeSpec is a plain value; a Rope is immutable after
// construction and its methods may run concurrently.
#ifndef VQKV_KERNELS_ROPE_H_
#define VQKV_KERNELS_ROPE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace vqkv {

// Stable numeric values: written into codebook files.
enum class RopePairs : uint8_t {
  // GGUF / llama.cpp LLaMA: pair i is dimensions (2i, 2i+1). (The GGUF
  // conversion permutes the Q/K projection rows so that this form equals
  // the Hugging Face one below on the original weights.)
  kAdjacent = 0,
  // Hugging Face / NeoX ("rotate half"): pair i is (i, i + rot_dims/2).
  kHalf = 1,
};

struct RopeSpec {
  double theta = 10000.0;  // frequency base, > 1 and finite
  int rot_dims = 0;        // leading dimensions that rotate: even, >= 2
  RopePairs pairs = RopePairs::kAdjacent;

  // kInvalidArgument naming the field: theta not finite or <= 1, rot_dims
  // odd, < 2 or > head_dim, an unknown pair layout.
  absl::Status Validate(int head_dim) const;
  // "theta 10000, 64 dims, adjacent pairs": the form errors and messages use.
  std::string ToString() const;
  bool operator==(const RopeSpec&) const = default;
};

class Rope {
 public:
  // REQUIRES: spec.Validate(head_dim).ok().
  Rope(int head_dim, const RopeSpec& spec);

  int head_dim() const { return head_dim_; }
  const RopeSpec& spec() const { return spec_; }
  // Pair i's angle per position, theta^(-2i/rot_dims); rot_dims / 2 entries.
  const std::vector<double>& inv_freq() const { return inv_freq_; }

  // Rotates `heads` consecutive head vectors of one token at position `pos`
  // in place (forward), or undoes the rotation (inverse).
  void Apply(float* x, int heads, int64_t pos) const;
  void Invert(float* x, int heads, int64_t pos) const;

  // The same for a block of tokens laid out [layers][tokens][heads]
  // [head_dim], token t at position first_pos + t: the angles are computed
  // once per token (by recurrence from the first) and shared by the layers.
  // Equal to Apply / Invert token by token within a float rounding of the
  // angles' cos and sin (their difference is under 1e-6 relative).
  void ApplyBlock(float* x, int layers, int64_t tokens, int heads,
                  int64_t first_pos) const;
  void InvertBlock(float* x, int layers, int64_t tokens, int heads,
                   int64_t first_pos) const;

 private:
  // cos and sin (times sign) of each pair's angle at `pos`, into cs[2*pairs].
  void Angles(int64_t pos, float sign, float* cs) const;
  void RotateToken(float* x, int heads, const float* cs) const;
  void RotateBlock(float* x, int layers, int64_t tokens, int heads,
                   int64_t first_pos, float sign) const;

  int head_dim_;
  RopeSpec spec_;
  std::vector<double> inv_freq_;  // rot_dims / 2 entries
};

// Moves the rotary pairs of `vectors` consecutive head vectors of head_dim
// floats from layout `from` to layout `to`, in place: pair i's two values
// go from where `from` keeps them to where `to` does (dimensions past
// rot_dims stay). The same keys in another layout: a Hugging Face engine
// ("rotate half") caches the keys of a GGUF model's weights permuted this
// way. A no-op when from == to.
// REQUIRES: rot_dims even, 2 <= rot_dims <= head_dim.
void ReorderRopePairs(float* x, int64_t vectors, int head_dim, int rot_dims,
                      RopePairs from, RopePairs to);

}  // namespace vqkv

#endif  // VQKV_KERNELS_ROPE_H_
