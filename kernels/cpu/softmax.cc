#include "kernels/cpu/softmax.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VQKV_SOFTMAX_X86 1
#endif

namespace vqkv::cpu {

void SoftmaxInPlaceRef(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t j = 1; j < n; ++j) mx = std::max(mx, x[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - mx);
    sum += x[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) x[j] *= inv;
}

#ifdef VQKV_SOFTMAX_X86
namespace {

// exp of 8 floats (Cephes exp: range reduction by ln 2 in two parts, degree
// 5 polynomial). Inputs below -87.3 flush to (near) zero.
__attribute__((target("avx2,fma"))) inline __m256 Exp8(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365478515625f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
                              _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_cvttps_epi32(fx);
  e = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) void SoftmaxAvx2(float* x, int64_t n) {
  const int64_t n8 = n / 8 * 8;
  __m256 vmax = _mm256_set1_ps(x[0]);
  for (int64_t j = 0; j < n8; j += 8) {
    vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + j));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  float mx = *std::max_element(lanes, lanes + 8);
  for (int64_t j = n8; j < n; ++j) mx = std::max(mx, x[j]);
  const __m256 m = _mm256_set1_ps(mx);
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < n8; j += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), m));
    _mm256_storeu_ps(x + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = HorizontalSum(vsum);
  for (int64_t j = n8; j < n; ++j) {
    x[j] = std::exp(x[j] - mx);
    sum += x[j];
  }
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (int64_t j = 0; j < n8; j += 8) {
    _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), inv));
  }
  for (int64_t j = n8; j < n; ++j) x[j] *= 1.0f / sum;
}

__attribute__((target("avx2,fma"))) float ExpInPlaceAvx2(float* x, int64_t n) {
  const int64_t n8 = n / 8 * 8;
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < n8; j += 8) {
    const __m256 e = Exp8(_mm256_loadu_ps(x + j));
    _mm256_storeu_ps(x + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = HorizontalSum(vsum);
  for (int64_t j = n8; j < n; ++j) sum += (x[j] = std::exp(x[j]));
  return sum;
}

}  // namespace
#endif

float ExpInPlaceRef(float* x, int64_t n) {
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += (x[j] = std::exp(x[j]));
  return sum;
}

float ExpInPlace(float* x, int64_t n) {
#ifdef VQKV_SOFTMAX_X86
  if (Features().avx2) return ExpInPlaceAvx2(x, n);
#endif
  return ExpInPlaceRef(x, n);
}

void SoftmaxInPlace(float* x, int64_t n) {
#ifdef VQKV_SOFTMAX_X86
  // The kernels' one dispatch, so VQKV_SIMD=scalar caps this loop too.
  if (Features().avx2) {
    SoftmaxAvx2(x, n);
    return;
  }
#endif
  SoftmaxInPlaceRef(x, n);
}

}  // namespace vqkv::cpu
