// Scalar reference kernels: the definition of every RVQ kernel's result.
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/rvq_kernels.h"
#include "kernels/fp16.h"

namespace vqkv::cpu {

int NearestCodewordRef(const float* r, const float* cb, const float* norms,
                       int K, int dim, float* best_score) {
  int best = 0;
  float best_val = std::numeric_limits<float>::infinity();
  for (int k = 0; k < K; ++k) {
    const float* c = cb + static_cast<size_t>(k) * dim;
    float dot = 0;
    for (int d = 0; d < dim; ++d) dot += r[d] * c[d];
    const float score = norms[k] - 2.0f * dot;
    if (score < best_val) {
      best_val = score;
      best = k;
    }
  }
  if (best_score != nullptr) *best_score = best_val;
  return best;
}

void RvqEncodeGreedyRef(const float* x, int64_t n, int dim,
                        const float* codebooks, const float* norms, int stages,
                        int K, uint16_t* codes) {
  std::vector<float> r(dim);
  const size_t stage_floats = static_cast<size_t>(K) * dim;
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(r.data(), x + i * dim, sizeof(float) * dim);
    for (int s = 0; s < stages; ++s) {
      const float* cb = codebooks + s * stage_floats;
      const int k = NearestCodewordRef(r.data(), cb, norms + int64_t{s} * K, K,
                                       dim, nullptr);
      codes[i * stages + s] = static_cast<uint16_t>(k);
      const float* c = cb + static_cast<size_t>(k) * dim;
      for (int d = 0; d < dim; ++d) r[d] -= c[d];
    }
  }
}

void RvqDecodeRef(const uint16_t* codes, int64_t n, int stages,
                  const float* codebooks, int K, int dim, float* out) {
  const size_t stage_floats = static_cast<size_t>(K) * dim;
  for (int64_t i = 0; i < n; ++i) {
    float* o = out + i * dim;
    for (int d = 0; d < dim; ++d) o[d] = 0;
    for (int s = 0; s < stages; ++s) {
      const float* c = codebooks + s * stage_floats +
                       static_cast<size_t>(codes[i * stages + s]) * dim;
      for (int d = 0; d < dim; ++d) o[d] += c[d];
    }
  }
}

void RvqDecodeHalfRef(const uint16_t* codes, int64_t n, int stages,
                      const float* codebooks, int K, int dim, uint16_t* out) {
  std::vector<float> tmp(dim);
  for (int64_t i = 0; i < n; ++i) {
    RvqDecodeRef(codes + i * stages, 1, stages, codebooks, K, dim, tmp.data());
    for (int d = 0; d < dim; ++d) out[i * dim + d] = FloatToHalfRef(tmp[d]);
  }
}

}  // namespace vqkv::cpu

namespace vqkv::cpu {

int ArgminScoreRef(const float* norms, const float* dots, int K,
                   float* best_score) {
  int best = 0;
  float best_val = std::numeric_limits<float>::infinity();
  for (int k = 0; k < K; ++k) {
    const float score = norms[k] - 2.0f * dots[k];
    if (score < best_val) {
      best_val = score;
      best = k;
    }
  }
  if (best_score != nullptr) *best_score = best_val;
  return best;
}

int ScoresBelowRef(const float* norms, const float* dots, int K, float limit,
                   int32_t* idx, float* score) {
  int n = 0;
  for (int k = 0; k < K; ++k) {
    const float s = norms[k] - 2.0f * dots[k];
    if (s < limit) {
      idx[n] = k;
      score[n] = s;
      ++n;
    }
  }
  return n;
}

}  // namespace vqkv::cpu
