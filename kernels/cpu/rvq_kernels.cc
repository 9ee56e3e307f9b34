// Run-time dispatch of the RVQ kernels to the widest level cpu::Features()
// allows (it honours the VQKV_SIMD cap).
#include "kernels/cpu/rvq_kernels.h"

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/rvq_kernels_impl.h"

namespace vqkv::cpu {

int NearestCodeword(const float* r, const float* cb, const float* norms, int K,
                    int dim, float* best_score) {
  const CpuFeatures& f = Features();
  if (f.avx512) return NearestCodewordAvx512(r, cb, norms, K, dim, best_score);
  if (f.avx2) return NearestCodewordAvx2(r, cb, norms, K, dim, best_score);
  return NearestCodewordRef(r, cb, norms, K, dim, best_score);
}

void RvqEncodeGreedy(const float* x, int64_t n, int dim, const float* codebooks,
                     const float* norms, int stages, int K, uint16_t* codes) {
  const CpuFeatures& f = Features();
  if (f.avx512) {
    RvqEncodeGreedyAvx512(x, n, dim, codebooks, norms, stages, K, codes);
  } else if (f.avx2) {
    RvqEncodeGreedyAvx2(x, n, dim, codebooks, norms, stages, K, codes);
  } else {
    RvqEncodeGreedyRef(x, n, dim, codebooks, norms, stages, K, codes);
  }
}

void RvqDecode(const uint16_t* codes, int64_t n, int stages,
               const float* codebooks, int K, int dim, float* out) {
  const CpuFeatures& f = Features();
  if (f.avx512) {
    RvqDecodeAvx512(codes, n, stages, codebooks, K, dim, out);
  } else if (f.avx2) {
    RvqDecodeAvx2(codes, n, stages, codebooks, K, dim, out);
  } else {
    RvqDecodeRef(codes, n, stages, codebooks, K, dim, out);
  }
}

int ArgminScore(const float* norms, const float* dots, int K,
                float* best_score) {
  if (Features().avx2) return ArgminScoreAvx2(norms, dots, K, best_score);
  return ArgminScoreRef(norms, dots, K, best_score);
}

int ScoresBelow(const float* norms, const float* dots, int K, float limit,
                int32_t* idx, float* score) {
  if (Features().avx2)
    return ScoresBelowAvx2(norms, dots, K, limit, idx, score);
  return ScoresBelowRef(norms, dots, K, limit, idx, score);
}

}  // namespace vqkv::cpu
