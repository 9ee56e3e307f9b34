// CUDA decode of VqCodec codes straight into an engine's paged KV cache: the
// load path of the client's CUDA pages (client/cuda/cuda_kv_device.h) without
// a host decode or a float32 copy over PCIe. Host launcher only; the kernel
// is in paged_decode.cu.
//
// Each element runs kernels/vq_decode_element.h, the code the host
// reference VqDecodeTokensRef runs: key codeword sums per group (plus the
// key refinement's on a refined layer), key gain,
// rotation of keys coded before RoPE, rotary pairs in the engine's layout;
// value codeword sums. The result is rounded to the page dtype as
// LaunchPagedScatter rounds (kernels/cuda/page_element.cuh).
//
// `view` holds device pointers (codebooks, dimension maps, gains, angles);
// rows[i] (device-readable) names the page slot of one token and where its
// block's layer slices of codes are (device memory; on a layer the view
// refines, its refinement slice too: REQUIRES refine_codes set there).
// Grid-stride, so any n works. Two kernels, equal results: by default one
// warp per (token, head) vector, its codes unpacked once and a key's
// dimensions decoded once, in shared memory (vectors of at most 256 stages,
// refinement included, and 256 dimensions); and one thread per output
// element (any shape; PagedDecodeKernel::kPerElement asks for it, for tests
// and benchmarks).
//
// Enqueues on `stream` and returns; cudaErrorInvalidValue (checked before
// touching the device) for n < 0, a view without its arrays or with bits
// outside 1..16, more than kMaxDecodeKeyGroups groups, bad rot_dims,
// missing angles when rotating, or refinement stages without codebooks; a
// bad page tensor or null rows when n > 0.
//
// Thread safety: may be called from any host thread; concurrent launches
// must write disjoint slots.
#ifndef VQKV_KERNELS_CUDA_PAGED_DECODE_CUH_
#define VQKV_KERNELS_CUDA_PAGED_DECODE_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/paged_copy.cuh"
#include "kernels/vq_decode_element.h"

namespace vqkv::cuda {

struct CodedPageRow {
  int32_t page = 0;
  int32_t slot = 0;
  CodedToken token;  // codes in device memory
};

enum class PagedDecodeKernel { kAuto, kPerElement };

cudaError_t LaunchVqDecodeToPages(
    const VqDecodeView& view, int layer, const PageTensor& keys,
    const PageTensor& values, const CodedPageRow* d_rows, int64_t n,
    cudaStream_t stream, PagedDecodeKernel kernel = PagedDecodeKernel::kAuto);

}  // namespace vqkv::cuda

#endif  // VQKV_KERNELS_CUDA_PAGED_DECODE_CUH_
