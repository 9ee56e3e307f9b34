// IEEE 754 binary16 and bfloat16 <-> float32 conversion, usable from C++ and
// CUDA host code. Scalar versions are the reference; the batch versions use
// F16C when the CPU has it (chosen at run time) and are tested against the
// scalar ones.
#ifndef VQKV_KERNELS_FP16_H_
#define VQKV_KERNELS_FP16_H_

#include <cstddef>
#include <cstdint>

namespace vqkv {

// Round-to-nearest-even, with overflow to infinity and NaN preserved.
uint16_t FloatToHalfRef(float f);
float HalfToFloatRef(uint16_t h);

// bfloat16: the high 16 bits of a float32; FloatToBf16 rounds to nearest
// even and keeps NaN a (quiet) NaN.
float Bf16ToFloat(uint16_t h);
uint16_t FloatToBf16(float f);

// Batch conversions: n elements, any alignment.
void FloatToHalf(const float* in, size_t n, uint16_t* out);
void HalfToFloat(const uint16_t* in, size_t n, float* out);

}  // namespace vqkv

#endif  // VQKV_KERNELS_FP16_H_
