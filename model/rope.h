// Rotary position embedding as llama.cpp applies it to GGUF LLaMA weights:
// dimension pairs (2i, 2i+1) of a head vector rotate by pos * theta^(-2i/d).
// (The GGUF conversion permutes the Q/K projection rows so that this
// adjacent-pair form equals the Hugging Face rotate-half form.) Pair i
// therefore has rotary frequency theta^(-2i/d): low i rotates fast, high i
// slowly.
//
// Thread safety: a Rope is immutable after construction.
#ifndef VQKV_MODEL_ROPE_H_
#define VQKV_MODEL_ROPE_H_

#include <cstdint>
#include <vector>

namespace vqkv::model {

class Rope {
 public:
  // `rot_dims` leading dimensions of each head rotate (REQUIRES: even,
  // <= head_dim); the rest pass through.
  Rope(int head_dim, int rot_dims, double theta);

  int head_dim() const { return head_dim_; }

  // Rotates `heads` consecutive head vectors of one token at position `pos`
  // in place (forward), or undoes the rotation (inverse).
  void Apply(float* x, int heads, int64_t pos) const;
  void Invert(float* x, int heads, int64_t pos) const;

 private:
  void Rotate(float* x, int heads, int64_t pos, float sign) const;

  int head_dim_;
  int rot_dims_;
  std::vector<double> inv_freq_;  // rot_dims / 2 entries
};

}  // namespace vqkv::model

#endif  // VQKV_MODEL_ROPE_H_
