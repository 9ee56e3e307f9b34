// Inner kernels of residual vector quantization on the CPU, over one
// quantizer (one group of `dim` dimensions):
//
//   codebooks: float [stages][K][dim], K = 2^bits codewords per stage
//   norms:     float [stages][K], norms[s][k] = ||codebooks[s][k]||^2
//   x:         float [n][dim], the vectors to encode
//   codes:     uint16 [n][stages], one codeword index per stage
//   out:       float [n][dim] (or binary16 for the _half variants)
//
// Every kernel has a scalar _Ref version that is the definition of its
// result; the dispatching versions pick AVX-512, AVX2 or scalar at run time
// (kernels/cpu/cpu_features.h) and are tested against the reference with
// explicit tolerances. CUDA kernels (kernels/cuda/rvq_cuda.cuh) are tested
// against the same references.
//
// Thread safety: all functions are pure; callers may run them concurrently on
// disjoint outputs.
#ifndef VQKV_KERNELS_CPU_RVQ_KERNELS_H_
#define VQKV_KERNELS_CPU_RVQ_KERNELS_H_

#include <cstdint>

namespace vqkv::cpu {

// Index of the codeword nearest to r (squared L2), i.e. the k minimising
// norms[k] - 2 <r, cb[k]>. Ties go to the lowest index. If best_score is not
// null it receives that minimum (||r - cb[k]||^2 - ||r||^2).
// cb: [K][dim], norms: [K].
int NearestCodewordRef(const float* r, const float* cb, const float* norms,
                       int K, int dim, float* best_score);
int NearestCodeword(const float* r, const float* cb, const float* norms, int K,
                    int dim, float* best_score);

// Greedy RVQ encode: for each vector, stage by stage, choose the nearest
// codeword to the current residual and subtract it.
void RvqEncodeGreedyRef(const float* x, int64_t n, int dim,
                        const float* codebooks, const float* norms, int stages,
                        int K, uint16_t* codes);
void RvqEncodeGreedy(const float* x, int64_t n, int dim, const float* codebooks,
                     const float* norms, int stages, int K, uint16_t* codes);

// RVQ decode: out[i] = sum over s of codebooks[s][codes[i][s]].
void RvqDecodeRef(const uint16_t* codes, int64_t n, int stages,
                  const float* codebooks, int K, int dim, float* out);
void RvqDecode(const uint16_t* codes, int64_t n, int stages,
               const float* codebooks, int K, int dim, float* out);

// Index k minimising norms[k] - 2 * dots[k] (ties: lowest index), where
// dots[k] = <r, cb[k]> was computed elsewhere (e.g. by sgemm for a batch);
// best_score (if not null) receives that minimum.
int ArgminScoreRef(const float* norms, const float* dots, int K,
                   float* best_score);
int ArgminScore(const float* norms, const float* dots, int K,
                float* best_score);

// Beam-search candidate filter: writes to idx/score, in increasing k, every
// k with norms[k] - 2 * dots[k] < limit (score receives that value) and
// returns how many. idx and score must hold K entries. A beam step keeps
// the B best of B*K candidates; once B are known, almost every other
// candidate fails this test, so the vector compare replaces a per-candidate
// heap check.
int ScoresBelowRef(const float* norms, const float* dots, int K, float limit,
                   int32_t* idx, float* score);
int ScoresBelow(const float* norms, const float* dots, int K, float limit,
                int32_t* idx, float* score);

// Same sum, written as binary16 (round to nearest even); the CPU twin of the
// CUDA decode kernel's fp16 output.
void RvqDecodeHalfRef(const uint16_t* codes, int64_t n, int stages,
                      const float* codebooks, int K, int dim, uint16_t* out);

}  // namespace vqkv::cpu

#endif  // VQKV_KERNELS_CPU_RVQ_KERNELS_H_
