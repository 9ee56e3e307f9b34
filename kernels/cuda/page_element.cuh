// One element of an engine's page tensor (kernels/cuda/paged_copy.cuh's
// PageTensor) read as float32 or written from it, for the kernels that touch
// pages (paged_copy.cu, paged_decode.cu). Reads are exact; writes round to
// nearest even (NaN stays NaN), bit-identical to kernels/fp16.h on the host.
#ifndef VQKV_KERNELS_CUDA_PAGE_ELEMENT_CUH_
#define VQKV_KERNELS_CUDA_PAGE_ELEMENT_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/paged_copy.cuh"

namespace vqkv::cuda {

__device__ inline float LoadPageElement(const void* data, int32_t dtype,
                                        int64_t off) {
  switch (dtype) {
    case kPageF16:
      return __half2float(static_cast<const __half*>(data)[off]);
    case kPageBf16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(data)[off]);
    default:
      return static_cast<const float*>(data)[off];
  }
}

__device__ inline void StorePageElement(void* data, int32_t dtype, int64_t off,
                                        float v) {
  switch (dtype) {
    case kPageF16:
      static_cast<__half*>(data)[off] = __float2half_rn(v);
      return;
    case kPageBf16:
      static_cast<__nv_bfloat16*>(data)[off] = __float2bfloat16_rn(v);
      return;
    default:
      static_cast<float*>(data)[off] = v;
  }
}

// A page tensor's arguments are usable: data set and a known dtype.
inline bool ValidPageTensor(const PageTensor& t) {
  return t.data != nullptr &&
         (t.dtype == kPageF16 || t.dtype == kPageBf16 || t.dtype == kPageF32);
}

// Blocks of kPageThreads threads for a grid-stride loop over `total`
// elements, capped so huge copies loop instead of overflowing the grid.
inline constexpr int kPageThreads = 256;
inline int PageGridBlocks(int64_t total) {
  const int64_t wanted = (total + kPageThreads - 1) / kPageThreads;
  return static_cast<int>(wanted < 65535 * 8 ? wanted : 65535 * 8);
}

}  // namespace vqkv::cuda

#endif  // VQKV_KERNELS_CUDA_PAGE_ELEMENT_CUH_
