// AVX-512 (F + BW + VL) kernels. Per-function target attributes keep the
// library runnable on CPUs without AVX-512; these are only called after
// cpu::Features() reports it.
// GCC 12's AVX-512 intrinsics headers use _mm512_undefined_* as pass-through
// operands, which -Wmaybe-uninitialized flags at every inlined call site
// (GCC bug 105593); the warning says nothing about this file's code.
// Clang has no such warning (and would reject the unknown name).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/rvq_kernels_impl.h"

#define VQKV_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

namespace vqkv::cpu {
namespace {

VQKV_AVX512 inline __mmask16 TailMask16(int rem) {
  return static_cast<__mmask16>((1u << rem) - 1u);
}

// Horizontal sum. (GCC 12's Reduce16 trips -Wmaybe-uninitialized
// inside its own header, hence this spelled-out version.)
VQKV_AVX512 inline float Reduce16(__m512 a) {
  __m512 t = _mm512_add_ps(a, _mm512_shuffle_f32x4(a, a, 0x4E));
  t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0xB1));
  __m128 s = _mm512_castps512_ps128(t);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace

VQKV_AVX512 int NearestCodewordAvx512(const float* r, const float* cb,
                                      const float* norms, int K, int dim,
                                      float* best_score) {
  const int full = dim / 16 * 16;
  const __mmask16 tail = TailMask16(dim - full);
  int best = 0;
  float best_val = std::numeric_limits<float>::infinity();
  int k = 0;
  for (; k + 4 <= K; k += 4) {
    const float* c0 = cb + static_cast<size_t>(k) * dim;
    const float* c1 = c0 + dim;
    const float* c2 = c1 + dim;
    const float* c3 = c2 + dim;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int d = 0; d < full; d += 16) {
      const __m512 rv = _mm512_loadu_ps(r + d);
      a0 = _mm512_fmadd_ps(rv, _mm512_loadu_ps(c0 + d), a0);
      a1 = _mm512_fmadd_ps(rv, _mm512_loadu_ps(c1 + d), a1);
      a2 = _mm512_fmadd_ps(rv, _mm512_loadu_ps(c2 + d), a2);
      a3 = _mm512_fmadd_ps(rv, _mm512_loadu_ps(c3 + d), a3);
    }
    if (full < dim) {
      const __m512 rv = _mm512_maskz_loadu_ps(tail, r + full);
      a0 = _mm512_fmadd_ps(rv, _mm512_maskz_loadu_ps(tail, c0 + full), a0);
      a1 = _mm512_fmadd_ps(rv, _mm512_maskz_loadu_ps(tail, c1 + full), a1);
      a2 = _mm512_fmadd_ps(rv, _mm512_maskz_loadu_ps(tail, c2 + full), a2);
      a3 = _mm512_fmadd_ps(rv, _mm512_maskz_loadu_ps(tail, c3 + full), a3);
    }
    const float s[4] = {
        norms[k] - 2.0f * Reduce16(a0), norms[k + 1] - 2.0f * Reduce16(a1),
        norms[k + 2] - 2.0f * Reduce16(a2), norms[k + 3] - 2.0f * Reduce16(a3)};
    for (int q = 0; q < 4; ++q) {
      if (s[q] < best_val) {
        best_val = s[q];
        best = k + q;
      }
    }
  }
  for (; k < K; ++k) {
    const float* c = cb + static_cast<size_t>(k) * dim;
    __m512 acc = _mm512_setzero_ps();
    for (int d = 0; d < full; d += 16)
      acc =
          _mm512_fmadd_ps(_mm512_loadu_ps(r + d), _mm512_loadu_ps(c + d), acc);
    if (full < dim)
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, r + full),
                            _mm512_maskz_loadu_ps(tail, c + full), acc);
    const float score = norms[k] - 2.0f * Reduce16(acc);
    if (score < best_val) {
      best_val = score;
      best = k;
    }
  }
  if (best_score != nullptr) *best_score = best_val;
  return best;
}

VQKV_AVX512 static void SubInPlace512(float* r, const float* c, int dim) {
  const int full = dim / 16 * 16;
  for (int d = 0; d < full; d += 16)
    _mm512_storeu_ps(
        r + d, _mm512_sub_ps(_mm512_loadu_ps(r + d), _mm512_loadu_ps(c + d)));
  if (full < dim) {
    const __mmask16 m = TailMask16(dim - full);
    _mm512_mask_storeu_ps(r + full, m,
                          _mm512_sub_ps(_mm512_maskz_loadu_ps(m, r + full),
                                        _mm512_maskz_loadu_ps(m, c + full)));
  }
}

VQKV_AVX512 static void AddInPlace512(float* o, const float* c, int dim) {
  const int full = dim / 16 * 16;
  for (int d = 0; d < full; d += 16)
    _mm512_storeu_ps(
        o + d, _mm512_add_ps(_mm512_loadu_ps(o + d), _mm512_loadu_ps(c + d)));
  if (full < dim) {
    const __mmask16 m = TailMask16(dim - full);
    _mm512_mask_storeu_ps(o + full, m,
                          _mm512_add_ps(_mm512_maskz_loadu_ps(m, o + full),
                                        _mm512_maskz_loadu_ps(m, c + full)));
  }
}

VQKV_AVX512 void RvqEncodeGreedyAvx512(const float* x, int64_t n, int dim,
                                       const float* codebooks,
                                       const float* norms, int stages, int K,
                                       uint16_t* codes) {
  std::vector<float> r(dim);
  const size_t stage_floats = static_cast<size_t>(K) * dim;
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(r.data(), x + i * dim, sizeof(float) * dim);
    for (int s = 0; s < stages; ++s) {
      const float* cb = codebooks + s * stage_floats;
      const int k = NearestCodewordAvx512(r.data(), cb, norms + int64_t{s} * K,
                                          K, dim, nullptr);
      codes[i * stages + s] = static_cast<uint16_t>(k);
      SubInPlace512(r.data(), cb + static_cast<size_t>(k) * dim, dim);
    }
  }
}

VQKV_AVX512 void RvqDecodeAvx512(const uint16_t* codes, int64_t n, int stages,
                                 const float* codebooks, int K, int dim,
                                 float* out) {
  const size_t stage_floats = static_cast<size_t>(K) * dim;
  for (int64_t i = 0; i < n; ++i) {
    float* o = out + i * dim;
    std::memset(o, 0, sizeof(float) * dim);
    for (int s = 0; s < stages; ++s) {
      AddInPlace512(o,
                    codebooks + s * stage_floats +
                        static_cast<size_t>(codes[i * stages + s]) * dim,
                    dim);
    }
  }
}

}  // namespace vqkv::cpu
