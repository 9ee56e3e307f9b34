// Softmax of one row in place, the inner loop of attention: the model
// runtime's name for kernels/cpu/softmax.h (AVX2+FMA when
// kernels/cpu/cpu_features.h allows it, a scalar std::exp loop otherwise).
//
// Thread safety: pure functions.
#ifndef VQKV_MODEL_SOFTMAX_H_
#define VQKV_MODEL_SOFTMAX_H_

#include <cstdint>

namespace vqkv::model {

// x[0, n) <- exp(x - max) / sum. REQUIRES: n >= 1, no NaN in x.
void SoftmaxInPlace(float* x, int64_t n);
void SoftmaxInPlaceRef(float* x, int64_t n);  // scalar reference

}  // namespace vqkv::model

#endif  // VQKV_MODEL_SOFTMAX_H_
