// HostPages: one layer's page tensor (kernels/cuda/paged_copy.cuh's
// layout) in host memory, for the CUDA tests of the kernels that read and
// write pages: padded strides, so that nothing is contiguous by accident,
// and the CPU path's conversions (kernels/fp16.h) as the reference rounding.
#ifndef VQKV_TESTS_UNIT_KERNELS_CUDA_HOST_PAGES_H_
#define VQKV_TESTS_UNIT_KERNELS_CUDA_HOST_PAGES_H_

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cuda/paged_copy.cuh"
#include "kernels/fp16.h"

namespace vqkv::cuda {

// One layer's page tensor in host memory, with padded strides so that
// nothing is contiguous by accident: (page, slot, head, d) for NHD or
// (page, head, slot, d) for HND.
struct HostPages {
  int32_t dtype;
  int64_t pages, slots, heads, dim;
  bool hnd;
  int64_t strides[4];
  std::vector<uint8_t> bytes;

  HostPages(int32_t dt, int64_t p, int64_t s, int64_t h, int64_t d,
            bool h_first)
      : dtype(dt), pages(p), slots(s), heads(h), dim(d), hnd(h_first) {
    const int64_t dim_pad = d + 3;
    if (!hnd) {
      strides[3] = 1;
      strides[2] = dim_pad;
      strides[1] = h * dim_pad;
      strides[0] = s * h * dim_pad + 5;
    } else {
      strides[3] = 1;
      strides[1] = dim_pad;
      strides[2] = s * dim_pad;
      strides[0] = h * s * dim_pad + 5;
    }
    bytes.assign(static_cast<size_t>(p * strides[0] * ElementBytes()), 0);
  }
  int ElementBytes() const { return dtype == kPageF32 ? 4 : 2; }
  int64_t Offset(int64_t page, int64_t slot, int64_t h, int64_t d) const {
    return page * strides[0] + slot * strides[1] + h * strides[2] +
           d * strides[3];
  }
  float Get(int64_t off) const {
    if (dtype == kPageF32) {
      float f;
      std::memcpy(&f, &bytes[off * 4], 4);
      return f;
    }
    uint16_t u;
    std::memcpy(&u, &bytes[off * 2], 2);
    return dtype == kPageF16 ? HalfToFloatRef(u) : Bf16ToFloat(u);
  }
  void Set(int64_t off, float v) {  // the reference rounding
    if (dtype == kPageF32) {
      std::memcpy(&bytes[off * 4], &v, 4);
      return;
    }
    const uint16_t u = dtype == kPageF16 ? FloatToHalfRef(v) : FloatToBf16(v);
    std::memcpy(&bytes[off * 2], &u, 2);
  }
};

}  // namespace vqkv::cuda

#endif  // VQKV_TESTS_UNIT_KERNELS_CUDA_HOST_PAGES_H_
