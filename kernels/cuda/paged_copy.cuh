// CUDA copies between an engine's paged KV cache in device memory and float32
// rows, the device side of the client's CUDA path (client/cuda/). Host
// launchers only; the kernels live in paged_copy.cu.
//
// A page tensor is addressed as in client/paged_kv.h: element (page, slot,
// head, d) of one layer's K or V lives at data[page * strides[0] + slot *
// strides[1] + head * strides[2] + d * strides[3]] (strides in elements), in
// fp16, bf16 or fp32. A PagedRow names one token: its page and slot, and
// where its float32 [kv_heads][head_dim] keys and values are (or go). The
// row pointers may point to device memory or to pinned, mapped host memory
// (cudaHostAllocMapped; with unified addressing the host pointer is the
// device pointer), so a gather can write straight into host staging.
//
// Gather converts to float32 exactly; Scatter rounds to the page dtype to
// nearest even (NaN stays NaN), bit-identical to the CPU path
// (client/paged_kv.cc ScatterLayer, kernels/fp16.h).
//
// Launchers enqueue on `stream` and return without waiting; the returned
// cudaError_t reports argument errors (cudaErrorInvalidValue, checked before
// touching the device) and launch errors.
//
// Thread safety: launchers may be called from any host thread; concurrent
// scatters must write disjoint slots.
#ifndef VQKV_KERNELS_CUDA_PAGED_COPY_CUH_
#define VQKV_KERNELS_CUDA_PAGED_COPY_CUH_

#include <cuda_runtime.h>

#include <cstdint>

namespace vqkv::cuda {

// Element types of a page tensor; the values of client::DType.
enum PageDType : int32_t { kPageF16 = 1, kPageBf16 = 2, kPageF32 = 3 };

struct PageTensor {
  void* data = nullptr;
  int32_t dtype = kPageF16;
  int64_t strides[4] = {0, 0, 0, 0};  // (page, slot, head, dim), elements
};

struct PagedRow {
  int32_t page = 0;
  int32_t slot = 0;
  float* keys = nullptr;    // [kv_heads][head_dim]
  float* values = nullptr;  // [kv_heads][head_dim]
};

// For each of the n rows (d_rows in device-readable memory), copies the
// token's keys from `keys` and values from `values` into the row's buffers.
// REQUIRES (else cudaErrorInvalidValue): n >= 0; kv_heads, head_dim >= 1;
// a known dtype and non-null data and d_rows when n > 0.
cudaError_t LaunchPagedGather(const PageTensor& keys, const PageTensor& values,
                              const PagedRow* d_rows, int64_t n, int kv_heads,
                              int head_dim, cudaStream_t stream);

// The inverse: writes each row's buffers into its page slot.
cudaError_t LaunchPagedScatter(const PageTensor& keys, const PageTensor& values,
                               const PagedRow* d_rows, int64_t n, int kv_heads,
                               int head_dim, cudaStream_t stream);

}  // namespace vqkv::cuda

#endif  // VQKV_KERNELS_CUDA_PAGED_COPY_CUH_
