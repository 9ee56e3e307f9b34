#include "kernels/cuda/page_element.cuh"
#include "kernels/cuda/paged_encode.cuh"
#include "kernels/vq_encode_element.h"

namespace vqkv::cuda {
namespace {

// The engine's K and V as VqEncodeInput reads them.
struct PagesKv {
  PageTensor keys, values;
  const EncodeTokenRow* rows;

  __device__ float operator()(int64_t token, int head, int e,
                              bool value) const {
    const PageTensor& t = value ? values : keys;
    const EncodeTokenRow& r = rows[token];
    return LoadPageElement(t.data, t.dtype,
                           PageOffset(t, r.page, r.slot, head, e));
  }
};

struct RowPos {
  const EncodeTokenRow* rows;
  __device__ int64_t operator()(int64_t token) const {
    return rows[token].position;
  }
};

// One thread per input element of every job, grid-stride; within a job,
// consecutive threads take consecutive dimensions of a row.
__global__ void VqEncodeInputsKernel(VqDecodeView w, PagesKv kv, int64_t n,
                                     float* const* inputs) {
  const int jobs = VqEncodeJobCount(w);
  const int64_t rows = VqEncodeJobRows(w, n);
  const int64_t total = 2 * n * w.kv_heads * int64_t{w.head_dim};
  const RowPos pos{kv.rows};
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t at = i;
    int j = 0;
    for (; j < jobs; ++j) {
      const int64_t size = rows * VqEncodeJobDims(w, j);
      if (at < size) break;
      at -= size;
    }
    if (j == jobs) continue;  // unreachable: the jobs cover total
    const int dims = VqEncodeJobDims(w, j);
    const int64_t r = at / dims;
    const int d = static_cast<int>(at - r * dims);
    inputs[j][at] = VqEncodeInput(w, j, r, d, kv, pos);
  }
}

// One thread per element of every slot's refinement input, grid-stride;
// consecutive threads take consecutive dimensions of a row.
__global__ void VqEncodeRefineInputsKernel(VqDecodeView w, int layer,
                                           PagesKv kv, int64_t n,
                                           const uint16_t* const* codes,
                                           float* const* inputs) {
  const int64_t rows = VqEncodeJobRows(w, n);
  const int64_t per_slot = rows * w.head_dim;
  const int64_t total = per_slot * w.slots;
  const RowPos pos{kv.rows};
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int slot = static_cast<int>(i / per_slot);
    const int64_t at = i - slot * per_slot;
    const int64_t r = at / w.head_dim;
    const int d = static_cast<int>(at - r * w.head_dim);
    inputs[slot][at] =
        VqEncodeRefineInput(w, layer, slot, r, d, kv, pos, codes);
  }
}

// One thread per output byte of every block's K slice, then V slice, then
// key refinement slice.
__global__ void VqPackLayerKernel(VqDecodeView w, const uint16_t* const* codes,
                                  const PackBlock* blocks, int count,
                                  int64_t total) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t at = i;
    for (int b = 0; b < count && at >= 0; ++b) {
      const PackBlock& blk = blocks[b];
      uint8_t* const out[3] = {blk.key_codes, blk.value_codes,
                               blk.refine_codes};
      for (int sec = 0; sec < 3; ++sec) {
        if (sec == 2 && out[sec] == nullptr) continue;  // none on the layer
        const VqSection section = static_cast<VqSection>(sec);
        const int64_t bytes = VqSliceBytes(w, section, blk.tokens);
        if (at < bytes) {
          out[sec][at] =
              VqPackedByte(w, section, codes, blk.first_token, blk.tokens, at);
          at = -1;  // written
          break;
        }
        at -= bytes;
      }
    }
  }
}

bool ValidView(const VqDecodeView& w) {
  if (w.kv_heads < 1 || w.head_dim < 1 || w.slots < 1 || w.key_groups < 1 ||
      w.key_groups > kMaxDecodeKeyGroups) {
    return false;
  }
  if (w.key_bits < 1 || w.key_bits > 16 || w.value_bits < 1 ||
      w.value_bits > 16 || w.key_stages < 1 || w.value_stages < 1) {
    return false;
  }
  for (int g = 0; g < w.key_groups; ++g) {
    if (w.group_dim[g] == nullptr || w.group_dims[g] < 1) return false;
  }
  if (w.rot_dims < 0 || w.rot_dims > w.head_dim || w.rot_dims % 2 != 0) {
    return false;
  }
  return !w.rotate || w.inv_freq != nullptr;
}

}  // namespace

cudaError_t LaunchVqEncodeInputs(const VqDecodeView& view,
                                 const PageTensor& keys,
                                 const PageTensor& values,
                                 const EncodeTokenRow* d_rows, int64_t n,
                                 float* const* d_inputs, cudaStream_t stream) {
  if (n < 0 || !ValidView(view)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (d_rows == nullptr || d_inputs == nullptr || !ValidPageTensor(keys) ||
      !ValidPageTensor(values)) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = 2 * n * view.kv_heads * int64_t{view.head_dim};
  VqEncodeInputsKernel<<<PageGridBlocks(total), kPageThreads, 0, stream>>>(
      view, PagesKv{keys, values, d_rows}, n, d_inputs);
  return cudaGetLastError();
}

cudaError_t LaunchVqEncodeRefineInputs(const VqDecodeView& view, int layer,
                                       const PageTensor& keys,
                                       const EncodeTokenRow* d_rows, int64_t n,
                                       const uint16_t* const* d_codes,
                                       float* const* d_inputs,
                                       cudaStream_t stream) {
  if (n < 0 || layer < 0 || !ValidView(view) || view.refine_stages < 1 ||
      view.key_refine_codebooks == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (d_rows == nullptr || d_codes == nullptr || d_inputs == nullptr ||
      !ValidPageTensor(keys)) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = n * view.kv_heads * int64_t{view.head_dim};
  // Values are not read: the keys stand in for them.
  VqEncodeRefineInputsKernel<<<PageGridBlocks(total), kPageThreads, 0,
                               stream>>>(
      view, layer, PagesKv{keys, keys, d_rows}, n, d_codes, d_inputs);
  return cudaGetLastError();
}

cudaError_t LaunchVqPackLayer(const VqDecodeView& view,
                              const uint16_t* const* d_codes,
                              const PackBlock* d_blocks, int count,
                              int64_t total_bytes, cudaStream_t stream) {
  if (count < 0 || total_bytes < 0 || !ValidView(view)) {
    return cudaErrorInvalidValue;
  }
  if (count == 0 || total_bytes == 0) return cudaSuccess;
  if (d_codes == nullptr || d_blocks == nullptr) return cudaErrorInvalidValue;
  VqPackLayerKernel<<<PageGridBlocks(total_bytes), kPageThreads, 0, stream>>>(
      view, d_codes, d_blocks, count, total_bytes);
  return cudaGetLastError();
}

}  // namespace vqkv::cuda
