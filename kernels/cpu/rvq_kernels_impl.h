// The per-ISA implementations behind the dispatching kernels of
// rvq_kernels.h, exposed so tests and benchmarks can pin one level.
// REQUIRES for the Avx2 versions: cpu::Features().avx2; for the Avx512
// versions: cpu::Features().avx512 (calling them elsewhere is undefined:
// the process dies with SIGILL).
#ifndef VQKV_KERNELS_CPU_RVQ_KERNELS_IMPL_H_
#define VQKV_KERNELS_CPU_RVQ_KERNELS_IMPL_H_

#include <cstdint>

namespace vqkv::cpu {

int NearestCodewordAvx2(const float* r, const float* cb, const float* norms,
                        int K, int dim, float* best_score);
void RvqEncodeGreedyAvx2(const float* x, int64_t n, int dim,
                         const float* codebooks, const float* norms, int stages,
                         int K, uint16_t* codes);
void RvqDecodeAvx2(const uint16_t* codes, int64_t n, int stages,
                   const float* codebooks, int K, int dim, float* out);
int ArgminScoreAvx2(const float* norms, const float* dots, int K,
                    float* best_score);
int ScoresBelowAvx2(const float* norms, const float* dots, int K, float limit,
                    int32_t* idx, float* score);

int NearestCodewordAvx512(const float* r, const float* cb, const float* norms,
                          int K, int dim, float* best_score);
void RvqEncodeGreedyAvx512(const float* x, int64_t n, int dim,
                           const float* codebooks, const float* norms,
                           int stages, int K, uint16_t* codes);
void RvqDecodeAvx512(const uint16_t* codes, int64_t n, int stages,
                     const float* codebooks, int K, int dim, float* out);

}  // namespace vqkv::cpu

#endif  // VQKV_KERNELS_CPU_RVQ_KERNELS_IMPL_H_
