#include "kernels/cuda/page_element.cuh"
#include "kernels/cuda/paged_copy.cuh"

namespace vqkv::cuda {
namespace {

// One thread per (row, head, d) element of K and of V, grid-stride over the
// 2 * n * kv_heads * head_dim elements; consecutive threads take consecutive
// d, so row buffers are read and written coalesced.
template <bool kGather>
__global__ void PagedCopyKernel(PageTensor keys, PageTensor values,
                                const PagedRow* rows, int64_t n, int kv_heads,
                                int head_dim) {
  const int64_t total = 2 * n * kv_heads * int64_t{head_dim};
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const RowElement x = SplitRowElement(i, n, kv_heads, head_dim);
    const PageTensor& t = x.is_value ? values : keys;
    const PagedRow row = rows[x.row];
    const int64_t off = PageOffset(t, row.page, row.slot, x.head, x.d);
    float* buf = x.is_value ? row.values : row.keys;
    const int64_t e = x.e;
    if constexpr (kGather) {
      buf[e] = LoadPageElement(t.data, t.dtype, off);
    } else {
      StorePageElement(t.data, t.dtype, off, buf[e]);
    }
  }
}

template <bool kGather>
cudaError_t LaunchPagedCopy(const PageTensor& keys, const PageTensor& values,
                            const PagedRow* d_rows, int64_t n, int kv_heads,
                            int head_dim, cudaStream_t stream) {
  if (n < 0 || kv_heads < 1 || head_dim < 1) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (d_rows == nullptr || !ValidPageTensor(keys) || !ValidPageTensor(values)) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = 2 * n * kv_heads * int64_t{head_dim};
  PagedCopyKernel<kGather><<<PageGridBlocks(total), kPageThreads, 0, stream>>>(
      keys, values, d_rows, n, kv_heads, head_dim);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchPagedGather(const PageTensor& keys, const PageTensor& values,
                              const PagedRow* d_rows, int64_t n, int kv_heads,
                              int head_dim, cudaStream_t stream) {
  return LaunchPagedCopy<true>(keys, values, d_rows, n, kv_heads, head_dim,
                               stream);
}

cudaError_t LaunchPagedScatter(const PageTensor& keys, const PageTensor& values,
                               const PagedRow* d_rows, int64_t n, int kv_heads,
                               int head_dim, cudaStream_t stream) {
  return LaunchPagedCopy<false>(keys, values, d_rows, n, kv_heads, head_dim,
                                stream);
}

}  // namespace vqkv::cuda
