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

// Element i of the K-then-V elements of n rows of kv_heads x head_dim, the
// order the page kernels' grid-stride loops take: whether it is a value,
// its row, its offset e in the row's [kv_heads][head_dim] and its head and
// dimension (consecutive i: consecutive d).
struct RowElement {
  bool is_value;
  int64_t row, e;
  int head, d;
};
__device__ inline RowElement SplitRowElement(int64_t i, int64_t n, int kv_heads,
                                             int head_dim) {
  const int64_t per_row = int64_t{kv_heads} * head_dim;
  RowElement x;
  x.is_value = i >= n * per_row;
  const int64_t j = x.is_value ? i - n * per_row : i;
  x.row = j / per_row;
  x.e = j - x.row * per_row;
  x.head = static_cast<int>(x.e / head_dim);
  x.d = static_cast<int>(x.e - int64_t{x.head} * head_dim);
  return x;
}

// The offset of (page, slot, head, d) in a page tensor.
__device__ inline int64_t PageOffset(const PageTensor& t, int64_t page,
                                     int64_t slot, int64_t head, int64_t d) {
  return page * t.strides[0] + slot * t.strides[1] + head * t.strides[2] +
         d * t.strides[3];
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
