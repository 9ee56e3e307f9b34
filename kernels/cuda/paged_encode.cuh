// CUDA steps of a VqCodec encode of one layer straight from an engine's
// paged KV cache (the save path of the client's CUDA pages, without a copy
// of the rows to the host and back). Host launchers only; kernels in
// paged_encode.cu. Between the two launchers the jobs are coded on the
// tensor cores (LaunchRvqEncodeGreedyTcBatch, rvq_cuda.cuh).
//
//   LaunchVqEncodeInputs: every quantizer job's input rows for the batch's
//     tokens, read from the page tensors (fp16, bf16 or fp32) and prepared
//     as VqEncodeInput does (kernels/vq_encode_element.h): keys moved into
//     the blocks' pair order and un-rotated, gathered per key group.
//   LaunchVqEncodeRefineInputs (a layer with a key refinement, once its key
//     jobs are coded): each slot's refinement job input, what the key codes
//     leave of each key (VqEncodeRefineInput); then those jobs are coded on
//     the tensor cores too.
//   LaunchVqPackLayer: each block's packed K, V (and key refinement) slices
//     of the layer from the jobs' codes (VqPackedByte), written where the
//     block says (device memory or pinned, mapped host memory).
//
// Each element runs the function the host reference VqEncodeLayerRef
// (kernels/vq_layer_encode.h) runs. `view` holds device pointers.
//
// Launchers enqueue on `stream` and return; cudaErrorInvalidValue (checked
// before touching the device) for bad counts, a view without its arrays, a
// bad page tensor or null pointers where work is to be done.
//
// Thread safety: launchers may be called from any host thread; concurrent
// launches must write disjoint outputs.
#ifndef VQKV_KERNELS_CUDA_PAGED_ENCODE_CUH_
#define VQKV_KERNELS_CUDA_PAGED_ENCODE_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/paged_copy.cuh"
#include "kernels/vq_decode_element.h"

namespace vqkv::cuda {

// Token i of the batch: its page slot and its position in its sequence.
struct EncodeTokenRow {
  int32_t page = 0;
  int32_t slot = 0;
  int64_t position = 0;
};

// inputs[j] (device, VqEncodeJobRows(view, n) x VqEncodeJobDims(view, j)
// floats) for every job j < VqEncodeJobCount(view); d_inputs is that
// pointer table in device-readable memory.
cudaError_t LaunchVqEncodeInputs(const VqDecodeView& view,
                                 const PageTensor& keys,
                                 const PageTensor& values,
                                 const EncodeTokenRow* d_rows, int64_t n,
                                 float* const* d_inputs, cudaStream_t stream);

// The refinement inputs of `layer` (view must name a key refinement for
// it): d_inputs[slot] (device, VqEncodeJobRows(view, n) x head_dim floats)
// for every slot, from the pages and d_codes, the jobs' codes table
// (device-readable; its key jobs coded).
cudaError_t LaunchVqEncodeRefineInputs(const VqDecodeView& view, int layer,
                                       const PageTensor& keys,
                                       const EncodeTokenRow* d_rows, int64_t n,
                                       const uint16_t* const* d_codes,
                                       float* const* d_inputs,
                                       cudaStream_t stream);

// One block of the batch: its tokens [first_token, first_token + tokens)
// and where its slices go (key_bytes / value_bytes / refine_bytes of
// VqDecodePlan::Slices(tokens, layer); refine_codes null on a layer without
// a key refinement).
struct PackBlock {
  int64_t first_token = 0;
  int64_t tokens = 0;
  uint8_t* key_codes = nullptr;
  uint8_t* value_codes = nullptr;
  uint8_t* refine_codes = nullptr;
};

// d_codes: per job, its codes [rows][stages] (device; on a refined layer
// its refinement jobs' too, VqEncodeRefineJob); d_blocks: `count` blocks
// (device-readable); total_bytes: the sum of their slices' bytes (key,
// value and refinement), which the launch covers.
cudaError_t LaunchVqPackLayer(const VqDecodeView& view,
                              const uint16_t* const* d_codes,
                              const PackBlock* d_blocks, int count,
                              int64_t total_bytes, cudaStream_t stream);

}  // namespace vqkv::cuda

#endif  // VQKV_KERNELS_CUDA_PAGED_ENCODE_CUH_
