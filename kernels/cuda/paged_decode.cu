#include "kernels/cuda/page_element.cuh"
#include "kernels/cuda/paged_decode.cuh"

namespace vqkv::cuda {
namespace {

// One thread per (row, head, d) element of K, then of V; consecutive threads
// take consecutive d, so codebook rows are read and pages written coalesced
// (NHD pages; HND pages too within a head).
__global__ void VqDecodeToPagesKernel(VqDecodeView w, int layer,
                                      PageTensor keys, PageTensor values,
                                      const CodedPageRow* rows, int64_t n) {
  const int64_t total = 2 * n * w.kv_heads * int64_t{w.head_dim};
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const RowElement el = SplitRowElement(i, n, w.kv_heads, w.head_dim);
    const CodedPageRow row = rows[el.row];
    const int64_t v = int64_t{row.token.token} * w.kv_heads + el.head;
    const PageTensor& t = el.is_value ? values : keys;
    const int64_t off = PageOffset(t, row.page, row.slot, el.head, el.d);
    const float x =
        el.is_value
            ? VqDecodeValueElement(w, layer, row.token.value_codes, v, el.d)
            : VqDecodeKeyElement(w, layer, row.token.key_codes, v,
                                 row.token.position, el.d);
    StorePageElement(t.data, t.dtype, off, x);
  }
}

bool ValidView(const VqDecodeView& w, int layer) {
  if (layer < 0 || w.kv_heads < 1 || w.head_dim < 1 || w.slots < 1) {
    return false;
  }
  if (w.key_groups < 1 || w.key_groups > kMaxDecodeKeyGroups) return false;
  if (w.key_bits < 1 || w.key_bits > 16 || w.value_bits < 1 ||
      w.value_bits > 16 || w.key_stages < 1 || w.value_stages < 1) {
    return false;
  }
  if (w.dim_group == nullptr || w.dim_index == nullptr ||
      w.key_codebooks == nullptr || w.value_codebooks == nullptr) {
    return false;
  }
  if (w.rot_dims < 0 || w.rot_dims > w.head_dim || w.rot_dims % 2 != 0) {
    return false;
  }
  return !w.rotate || w.inv_freq != nullptr;
}

}  // namespace

cudaError_t LaunchVqDecodeToPages(const VqDecodeView& view, int layer,
                                  const PageTensor& keys,
                                  const PageTensor& values,
                                  const CodedPageRow* d_rows, int64_t n,
                                  cudaStream_t stream) {
  if (n < 0 || !ValidView(view, layer)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (d_rows == nullptr || !ValidPageTensor(keys) || !ValidPageTensor(values)) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = 2 * n * view.kv_heads * int64_t{view.head_dim};
  VqDecodeToPagesKernel<<<PageGridBlocks(total), kPageThreads, 0, stream>>>(
      view, layer, keys, values, d_rows, n);
  return cudaGetLastError();
}

}  // namespace vqkv::cuda
