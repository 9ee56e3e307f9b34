// A RvqBatchEncoder (kernels/rvq_batch_encoder.h) on a CUDA GPU: the
// greedy RVQ encodes of a VqCodec::Encode run on the tensor cores
// (kernels/cuda/rvq_cuda.cuh, LaunchRvqEncodeGreedyTcBatch), every job of
// a call in one launch per head-dimension class.
//
// Per call: the jobs' rows are copied into pinned staging and to the device
// in one transfer, encoded, and the codes copied back in one transfer, on
// the encoder's own stream; the call returns once the codes are in the
// jobs' buffers. Each quantizer's codebooks are uploaded (and laid out for
// the tensor cores) the first time it is seen and kept, by its address, for
// the encoder's life: use one encoder per codec (VqCodec::SetBatchEncoder
// guarantees the quantizers do not change under it). Quantizers with more
// than 128 dimensions, or a GPU older than compute capability 8.0, fall
// back to the float32 CUDA kernel (the CPU's codes up to float near-ties);
// the tensor cores' picks are within their bf16 bound of the nearest
// codeword (kernels/cuda/rvq_cuda.cuh).
//
// Device memory: the codebooks (fp32 plus their bf16 copy: 1.5x the set's
// float32 size) and staging that grows to the largest call.
//
// Thread safety: EncodeGreedy may be called from any thread; calls are
// serialised (one stream, one set of staging buffers).
//
// Built only with CUDA (VQKV_HAVE_CUDA); client/gpu_encoder.h attaches it.
#ifndef VQKV_CLIENT_CUDA_CUDA_RVQ_ENCODER_H_
#define VQKV_CLIENT_CUDA_CUDA_RVQ_ENCODER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/rvq_batch_encoder.h"

namespace vqkv::client {

// Errors: kFailedPrecondition when `device` is not a usable CUDA device
// (no GPU or driver, index out of range), naming the CUDA error; kInternal
// when its stream cannot be created.
absl::StatusOr<std::shared_ptr<RvqBatchEncoder>> NewCudaRvqBatchEncoder(
    int device);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_CUDA_CUDA_RVQ_ENCODER_H_
