#include "kernels/cuda/page_element.cuh"
#include "kernels/cuda/paged_decode.cuh"

namespace vqkv::cuda {
namespace {

// Any shape: one thread per (row, head, d) element of K, then of V;
// consecutive threads take consecutive d, so codebook rows are read and
// pages written coalesced (NHD pages; HND pages too within a head).
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
            : VqDecodeKeyElement(w, layer, row.token.key_codes,
                                 row.token.refine_codes, v, row.token.position,
                                 el.d);
    StorePageElement(t.data, t.dtype, off, x);
  }
}

// One warp per (row, head) vector, keys then values: the vector's codes are
// unpacked once into shared memory (not once per element and stage), a
// key's block-layout dimensions are decoded once each into shared memory
// (not twice, once per side of its rotary pair), and the rotation reads
// them from there. Same element functions, same sums: the results are
// VqDecodeToPagesKernel's. For vectors of at most kMaxWarpStages stages
// (a refined key's refinement stages included) and kMaxWarpDims
// dimensions.
constexpr int kWarpsPerBlock = 8;
constexpr int kMaxWarpStages = 256;
constexpr int kMaxWarpDims = 256;

__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    VqDecodeToPagesWarpKernel(VqDecodeView w, int layer, PageTensor keys,
                              PageTensor values, const CodedPageRow* rows,
                              int64_t n) {
  __shared__ uint16_t codes_s[kWarpsPerBlock][kMaxWarpStages];
  __shared__ float dims_s[kWarpsPerBlock][kMaxWarpDims];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint16_t* codes = codes_s[warp];
  float* dims = dims_s[warp];
  const int64_t per_half = n * w.kv_heads;
  // The job index is the same for every lane of a warp: __syncwarp below
  // sees all of them.
  for (int64_t job = int64_t{blockIdx.x} * kWarpsPerBlock + warp;
       job < 2 * per_half; job += int64_t{gridDim.x} * kWarpsPerBlock) {
    const bool is_value = job >= per_half;
    const int64_t j = is_value ? job - per_half : job;
    const int64_t r = j / w.kv_heads;
    const int head = static_cast<int>(j - r * w.kv_heads);
    const CodedPageRow row = rows[r];
    const int64_t v = int64_t{row.token.token} * w.kv_heads + head;
    const int stages = is_value ? w.value_stages : w.key_stages;
    const int bits = is_value ? w.value_bits : w.key_bits;
    const uint8_t* packed =
        is_value ? row.token.value_codes : row.token.key_codes;
    for (int s = lane; s < stages; s += 32) {
      codes[s] =
          static_cast<uint16_t>(UnpackCodeAt(packed, v * stages + s, bits));
    }
    if (!is_value && row.token.refine_codes != nullptr &&
        VqKeyRefinement(w, layer, 0) != nullptr) {
      // The refinement's codes follow the key codes, as VqKeyDimFromCodes
      // numbers them.
      for (int s = lane; s < w.refine_stages; s += 32) {
        codes[stages + s] = static_cast<uint16_t>(UnpackCodeAt(
            row.token.refine_codes, v * w.refine_stages + s, bits));
      }
    }
    __syncwarp();
    auto code = [&](int s) { return uint32_t{codes[s]}; };
    const PageTensor& t = is_value ? values : keys;
    if (is_value) {
      for (int d = lane; d < w.head_dim; d += 32) {
        StorePageElement(t.data, t.dtype,
                         PageOffset(t, row.page, row.slot, head, d),
                         VqValueDimFromCodes(w, layer, head, d, code));
      }
    } else {
      for (int d = lane; d < w.head_dim; d += 32) {
        dims[d] = VqKeyDimFromCodes(w, layer, head, d, code);
      }
      __syncwarp();
      auto dim = [&](int d) { return dims[d]; };
      for (int e = lane; e < w.head_dim; e += 32) {
        StorePageElement(t.data, t.dtype,
                         PageOffset(t, row.page, row.slot, head, e),
                         VqKeyElementFromDims(w, row.token.position, e, dim));
      }
    }
    __syncwarp();  // the next job overwrites codes and dims
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
  if (w.refine_stages < 0 ||
      (w.refine_stages > 0 && w.key_refine_codebooks == nullptr)) {
    return false;
  }
  return !w.rotate || w.inv_freq != nullptr;
}

}  // namespace

cudaError_t LaunchVqDecodeToPages(const VqDecodeView& view, int layer,
                                  const PageTensor& keys,
                                  const PageTensor& values,
                                  const CodedPageRow* d_rows, int64_t n,
                                  cudaStream_t stream,
                                  PagedDecodeKernel kernel) {
  if (n < 0 || !ValidView(view, layer)) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (d_rows == nullptr || !ValidPageTensor(keys) || !ValidPageTensor(values)) {
    return cudaErrorInvalidValue;
  }
  if (kernel == PagedDecodeKernel::kAuto &&
      view.key_stages + view.refine_stages <= kMaxWarpStages &&
      view.value_stages <= kMaxWarpStages && view.head_dim <= kMaxWarpDims) {
    const int64_t jobs = 2 * n * view.kv_heads;
    const int64_t needed = (jobs + kWarpsPerBlock - 1) / kWarpsPerBlock;
    const int blocks =
        static_cast<int>(needed < 65535 * 8 ? needed : 65535 * 8);
    VqDecodeToPagesWarpKernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(
        view, layer, keys, values, d_rows, n);
    return cudaGetLastError();
  }
  const int64_t total = 2 * n * view.kv_heads * int64_t{view.head_dim};
  VqDecodeToPagesKernel<<<PageGridBlocks(total), kPageThreads, 0, stream>>>(
      view, layer, keys, values, d_rows, n);
  return cudaGetLastError();
}

}  // namespace vqkv::cuda
