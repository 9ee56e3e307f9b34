// AVX2 + FMA kernels. Every function carries its own target attribute so the
// library still runs on CPUs without AVX2 (they are only called after
// cpu::Features() says so).
#include <immintrin.h>

#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/rvq_kernels_impl.h"

#define VQKV_AVX2 __attribute__((target("avx2,fma")))

namespace vqkv::cpu {
namespace {

// Lane mask selecting the first `rem` (0..7) floats of a vector.
VQKV_AVX2 inline __m256i TailMask(int rem) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), idx);
}

// Horizontal sums of four vectors, returned as the four lanes of an __m128.
VQKV_AVX2 inline __m128 Sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd),
                    _mm256_extractf128_ps(abcd, 1));
}

VQKV_AVX2 inline float Sum1(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace

VQKV_AVX2 int NearestCodewordAvx2(const float* r, const float* cb,
                                  const float* norms, int K, int dim,
                                  float* best_score) {
  const int full = dim / 8 * 8;
  const __m256i tail = TailMask(dim - full);
  // The residual is loaded once; dim is at most a few hundred floats.
  constexpr int kMaxChunks = 64;
  __m256 rv[kMaxChunks];
  const int chunks = (dim + 7) / 8;
  if (chunks > kMaxChunks) {
    // Huge vectors: not a shape RVQ uses; stay correct.
    int best = 0;
    float best_val = std::numeric_limits<float>::infinity();
    for (int k = 0; k < K; ++k) {
      const float* c = cb + static_cast<size_t>(k) * dim;
      __m256 acc = _mm256_setzero_ps();
      for (int d = 0; d < full; d += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(r + d), _mm256_loadu_ps(c + d),
                              acc);
      if (full < dim)
        acc = _mm256_fmadd_ps(_mm256_maskload_ps(r + full, tail),
                              _mm256_maskload_ps(c + full, tail), acc);
      const float score = norms[k] - 2.0f * Sum1(acc);
      if (score < best_val) {
        best_val = score;
        best = k;
      }
    }
    if (best_score != nullptr) *best_score = best_val;
    return best;
  }
  for (int j = 0; j < full / 8; ++j) rv[j] = _mm256_loadu_ps(r + 8 * j);
  if (full < dim) rv[full / 8] = _mm256_maskload_ps(r + full, tail);

  int best = 0;
  float best_val = std::numeric_limits<float>::infinity();
  int k = 0;
  for (; k + 4 <= K; k += 4) {
    const float* c0 = cb + static_cast<size_t>(k) * dim;
    const float* c1 = c0 + dim;
    const float* c2 = c1 + dim;
    const float* c3 = c2 + dim;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int j = 0; j < full / 8; ++j) {
      const int d = 8 * j;
      a0 = _mm256_fmadd_ps(rv[j], _mm256_loadu_ps(c0 + d), a0);
      a1 = _mm256_fmadd_ps(rv[j], _mm256_loadu_ps(c1 + d), a1);
      a2 = _mm256_fmadd_ps(rv[j], _mm256_loadu_ps(c2 + d), a2);
      a3 = _mm256_fmadd_ps(rv[j], _mm256_loadu_ps(c3 + d), a3);
    }
    if (full < dim) {
      const __m256 t = rv[full / 8];
      a0 = _mm256_fmadd_ps(t, _mm256_maskload_ps(c0 + full, tail), a0);
      a1 = _mm256_fmadd_ps(t, _mm256_maskload_ps(c1 + full, tail), a1);
      a2 = _mm256_fmadd_ps(t, _mm256_maskload_ps(c2 + full, tail), a2);
      a3 = _mm256_fmadd_ps(t, _mm256_maskload_ps(c3 + full, tail), a3);
    }
    const __m128 dots = Sum4(a0, a1, a2, a3);
    const __m128 scores =
        _mm_fnmadd_ps(_mm_set1_ps(2.0f), dots, _mm_loadu_ps(norms + k));
    alignas(16) float s[4];
    _mm_store_ps(s, scores);
    for (int q = 0; q < 4; ++q) {
      if (s[q] < best_val) {
        best_val = s[q];
        best = k + q;
      }
    }
  }
  for (; k < K; ++k) {
    const float* c = cb + static_cast<size_t>(k) * dim;
    __m256 acc = _mm256_setzero_ps();
    for (int j = 0; j < full / 8; ++j)
      acc = _mm256_fmadd_ps(rv[j], _mm256_loadu_ps(c + 8 * j), acc);
    if (full < dim)
      acc = _mm256_fmadd_ps(rv[full / 8], _mm256_maskload_ps(c + full, tail),
                            acc);
    const float score = norms[k] - 2.0f * Sum1(acc);
    if (score < best_val) {
      best_val = score;
      best = k;
    }
  }
  if (best_score != nullptr) *best_score = best_val;
  return best;
}

VQKV_AVX2 static void SubInPlace(float* r, const float* c, int dim) {
  int d = 0;
  for (; d + 8 <= dim; d += 8)
    _mm256_storeu_ps(
        r + d, _mm256_sub_ps(_mm256_loadu_ps(r + d), _mm256_loadu_ps(c + d)));
  for (; d < dim; ++d) r[d] -= c[d];
}

VQKV_AVX2 void RvqEncodeGreedyAvx2(const float* x, int64_t n, int dim,
                                   const float* codebooks, const float* norms,
                                   int stages, int K, uint16_t* codes) {
  std::vector<float> r(dim);
  const size_t stage_floats = static_cast<size_t>(K) * dim;
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(r.data(), x + i * dim, sizeof(float) * dim);
    for (int s = 0; s < stages; ++s) {
      const float* cb = codebooks + s * stage_floats;
      const int k = NearestCodewordAvx2(r.data(), cb, norms + int64_t{s} * K, K,
                                        dim, nullptr);
      codes[i * stages + s] = static_cast<uint16_t>(k);
      SubInPlace(r.data(), cb + static_cast<size_t>(k) * dim, dim);
    }
  }
}

namespace {

// One token's sum over stages of its codeword rows, floats [d0, d0 + 8 *
// kVecs), kept in registers across the stages (the reference's order of
// additions: 0 + row 0 + row 1 + ..., so the result is bit-identical).
// While it sums, it prefetches the same floats of the next token's rows
// (`next`, nullptr for the last token): codebooks of a D=128 layer at the
// paper rate are 29 MiB, past the caches, and the rows' addresses are
// known from the codes well before they are needed.
template <int kVecs>
VQKV_AVX2 inline void SumRowsChunk(const uint16_t* code, const uint16_t* next,
                                   int stages, const float* codebooks,
                                   size_t stage_floats, int dim, int d0,
                                   float* o) {
  __m256 acc[kVecs];
  for (int v = 0; v < kVecs; ++v) acc[v] = _mm256_setzero_ps();
  for (int s = 0; s < stages; ++s) {
    const float* stage = codebooks + s * stage_floats + d0;
    if (next != nullptr) {
      const char* p = reinterpret_cast<const char*>(
          stage + static_cast<size_t>(next[s]) * dim);
      for (int b = 0; b < kVecs * 32; b += 64) {
        _mm_prefetch(p + b, _MM_HINT_T0);
      }
    }
    const float* row = stage + static_cast<size_t>(code[s]) * dim;
    for (int v = 0; v < kVecs; ++v) {
      acc[v] = _mm256_add_ps(acc[v], _mm256_loadu_ps(row + 8 * v));
    }
  }
  for (int v = 0; v < kVecs; ++v) _mm256_storeu_ps(o + d0 + 8 * v, acc[v]);
}

using SumRowsChunkFn = void (*)(const uint16_t*, const uint16_t*, int,
                                const float*, size_t, int, int, float*);
// SumRowsChunk<v> for v = 1..7 whole vectors (index 0 unused).
constexpr SumRowsChunkFn kSumRowsChunk[8] = {
    nullptr,         SumRowsChunk<1>, SumRowsChunk<2>, SumRowsChunk<3>,
    SumRowsChunk<4>, SumRowsChunk<5>, SumRowsChunk<6>, SumRowsChunk<7>};

}  // namespace

VQKV_AVX2 void RvqDecodeAvx2(const uint16_t* codes, int64_t n, int stages,
                             const float* codebooks, int K, int dim,
                             float* out) {
  const size_t stage_floats = static_cast<size_t>(K) * dim;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* code = codes + i * stages;
    const uint16_t* next = i + 1 < n ? code + stages : nullptr;
    float* o = out + i * dim;
    int d = 0;
    for (; d + 64 <= dim; d += 64) {
      SumRowsChunk<8>(code, next, stages, codebooks, stage_floats, dim, d, o);
    }
    // The rest of the whole vectors in one pass over the stages.
    if (const int vecs = (dim - d) / 8; vecs > 0) {
      kSumRowsChunk[vecs](code, next, stages, codebooks, stage_floats, dim, d,
                          o);
      d += 8 * vecs;
    }
    for (; d < dim; ++d) {
      float acc = 0.0f;
      for (int s = 0; s < stages; ++s) {
        acc += codebooks[s * stage_floats + static_cast<size_t>(code[s]) * dim +
                         d];
      }
      o[d] = acc;
    }
  }
}

VQKV_AVX2 int ArgminScoreAvx2(const float* norms, const float* dots, int K,
                              float* best_score) {
  // Per-lane running minimum and its index; strict < keeps the first index
  // within a lane, and the final reduction picks the lowest index among
  // lanes holding the minimum, so ties resolve like the reference.
  const __m256 two = _mm256_set1_ps(2.0f);
  __m256 vmin = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256i vidx = _mm256_setzero_si256();
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  int k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 s =
        _mm256_sub_ps(_mm256_loadu_ps(norms + k),
                      _mm256_mul_ps(two, _mm256_loadu_ps(dots + k)));
    const __m256 lt = _mm256_cmp_ps(s, vmin, _CMP_LT_OQ);
    vmin = _mm256_blendv_ps(vmin, s, lt);
    vidx = _mm256_blendv_epi8(vidx, idx, _mm256_castps_si256(lt));
    idx = _mm256_add_epi32(idx, step);
  }
  alignas(32) float mins[8];
  alignas(32) int idxs[8];
  _mm256_store_ps(mins, vmin);
  _mm256_store_si256(reinterpret_cast<__m256i*>(idxs), vidx);
  int best = 0;
  float best_val = std::numeric_limits<float>::infinity();
  for (int q = 0; q < 8; ++q) {
    if (mins[q] < best_val || (mins[q] == best_val && idxs[q] < best)) {
      best_val = mins[q];
      best = idxs[q];
    }
  }
  for (; k < K; ++k) {
    const float s = norms[k] - 2.0f * dots[k];
    if (s < best_val) {
      best_val = s;
      best = k;
    }
  }
  if (best_score != nullptr) *best_score = best_val;
  return best;
}

VQKV_AVX2 int ScoresBelowAvx2(const float* norms, const float* dots, int K,
                              float limit, int32_t* idx, float* score) {
  // Same arithmetic as the reference (norms - 2 * dots, no FMA), so the
  // selected set and the scores are bit-identical to it.
  const __m256 two = _mm256_set1_ps(2.0f);
  const __m256 lim = _mm256_set1_ps(limit);
  int n = 0;
  int k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 s =
        _mm256_sub_ps(_mm256_loadu_ps(norms + k),
                      _mm256_mul_ps(two, _mm256_loadu_ps(dots + k)));
    int mask = _mm256_movemask_ps(_mm256_cmp_ps(s, lim, _CMP_LT_OQ));
    if (mask == 0) continue;
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, s);
    while (mask != 0) {
      const int q = __builtin_ctz(static_cast<unsigned>(mask));
      idx[n] = k + q;
      score[n] = lanes[q];
      ++n;
      mask &= mask - 1;
    }
  }
  for (; k < K; ++k) {
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
