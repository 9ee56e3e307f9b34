// Softmax and exp of float rows in place, the inner loops of attention (the
// model runtime's model/softmax.h and code attention, kernels/
// code_attention.h). Uses AVX2+FMA when cpu_features.h allows it (the CPU
// has them and VQKV_SIMD does not cap below avx2; a Cephes-style exp
// accurate to a few ulp), scalar std::exp loops otherwise.
//
// Thread safety: pure functions.
#ifndef VQKV_KERNELS_CPU_SOFTMAX_H_
#define VQKV_KERNELS_CPU_SOFTMAX_H_

#include <cstdint>

namespace vqkv::cpu {

// x[0, n) <- exp(x - max) / sum. REQUIRES: n >= 1, no NaN in x.
void SoftmaxInPlace(float* x, int64_t n);
void SoftmaxInPlaceRef(float* x, int64_t n);  // scalar reference

// x[0, n) <- exp(x); returns the sum of the results. Inputs below -87.3
// give (near) zero, above 88.3 are clamped (AVX2 path). REQUIRES: no NaN.
float ExpInPlace(float* x, int64_t n);
float ExpInPlaceRef(float* x, int64_t n);  // scalar reference

}  // namespace vqkv::cpu

#endif  // VQKV_KERNELS_CPU_SOFTMAX_H_
