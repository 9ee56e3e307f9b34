#include "model/softmax.h"

#include "kernels/cpu/softmax.h"

namespace vqkv::model {

void SoftmaxInPlace(float* x, int64_t n) { cpu::SoftmaxInPlace(x, n); }
void SoftmaxInPlaceRef(float* x, int64_t n) { cpu::SoftmaxInPlaceRef(x, n); }

}  // namespace vqkv::model
