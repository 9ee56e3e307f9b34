#include "kernels/cpu/code_attention_kernels.h"

#include <algorithm>

#include "kernels/cpu/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VQKV_CODE_ATTENTION_X86 1
#define VQKV_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace vqkv::cpu {

void QueryTableRef(const float* cb, int64_t rows, int dim, const float* q,
                   int group, int gp, float scale, float* table) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = cb + r * dim;
    float* t = table + r * gp;
    for (int h = 0; h < gp; ++h) {
      float dot = 0;
      if (h < group) {
        for (int d = 0; d < dim; ++d) dot += c[d] * q[h * dim + d];
      }
      t[h] = scale * dot;
    }
  }
}

void WeightedCodewordSumRef(const float* weights, int gp, int group,
                            const float* cb, int64_t rows, int dim,
                            float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* w = weights + r * gp;
    const float* c = cb + r * dim;
    for (int h = 0; h < group; ++h) {
      if (w[h] == 0.0f) continue;
      for (int d = 0; d < dim; ++d) out[h * dim + d] += w[h] * c[d];
    }
  }
}

#ifdef VQKV_CODE_ATTENTION_X86
namespace {

// Four dot products per row: lanes h0..h0+3 of the table. q4 holds 4 query
// rows of dim floats (zeros for padding heads).
VQKV_AVX2 void QueryTable4Avx2(const float* cb, int64_t rows, int dim,
                               const float* q4, float scale, float* table,
                               int gp) {
  const __m128 vs = _mm_set1_ps(scale);
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = cb + r * dim;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int d = 0; d < dim; d += 8) {
      const __m256 x = _mm256_loadu_ps(c + d);
      a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q4 + d), a0);
      a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q4 + dim + d), a1);
      a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q4 + 2 * dim + d), a2);
      a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(q4 + 3 * dim + d), a3);
    }
    const __m256 t =
        _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m128 s =
        _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    _mm_storeu_ps(table + r * gp, _mm_mul_ps(s, vs));
  }
}

VQKV_AVX2 void WeightedCodewordSumAvx2(const float* weights, int gp, int group,
                                       const float* cb, int64_t rows, int dim,
                                       float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* w = weights + r * gp;
    const float* c = cb + r * dim;
    for (int h = 0; h < group; ++h) {
      if (w[h] == 0.0f) continue;
      const __m256 vw = _mm256_set1_ps(w[h]);
      float* o = out + h * dim;
      for (int d = 0; d < dim; d += 8) {
        _mm256_storeu_ps(o + d, _mm256_fmadd_ps(vw, _mm256_loadu_ps(c + d),
                                                _mm256_loadu_ps(o + d)));
      }
    }
  }
}

}  // namespace
#endif

void QueryTable(const float* cb, int64_t rows, int dim, const float* q,
                int group, int gp, float scale, float* table) {
#ifdef VQKV_CODE_ATTENTION_X86
  if (Features().avx2 && dim % 8 == 0 && gp % 4 == 0 && dim <= 1024) {
    float q4[4 * 1024];
    for (int h0 = 0; h0 < gp; h0 += 4) {
      for (int i = 0; i < 4; ++i) {
        const int h = h0 + i;
        if (h < group) {
          std::copy_n(q + h * dim, dim, q4 + i * dim);
        } else {
          std::fill_n(q4 + i * dim, dim, 0.0f);
        }
      }
      QueryTable4Avx2(cb, rows, dim, q4, scale, table + h0, gp);
    }
    return;
  }
#endif
  QueryTableRef(cb, rows, dim, q, group, gp, scale, table);
}

void WeightedCodewordSum(const float* weights, int gp, int group,
                         const float* cb, int64_t rows, int dim, float* out) {
#ifdef VQKV_CODE_ATTENTION_X86
  if (Features().avx2 && dim % 8 == 0) {
    WeightedCodewordSumAvx2(weights, gp, group, cb, rows, dim, out);
    return;
  }
#endif
  WeightedCodewordSumRef(weights, gp, group, cb, rows, dim, out);
}

}  // namespace vqkv::cpu
