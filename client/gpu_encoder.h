// Encoding on a GPU for clients: CacheClientOptions::encode_cuda_device
// attaches a CUDA batch encoder (client/cuda/cuda_rvq_encoder.h) to the
// client's VqCodec, so the RVQ searches of every save run on that GPU
// instead of the CPU. Other codecs have no search to move: nothing is
// attached.
#ifndef VQKV_CLIENT_GPU_ENCODER_H_
#define VQKV_CLIENT_GPU_ENCODER_H_

#include "absl/status/status.h"
#include "kernels/codec.h"

namespace vqkv::client {

// device < 0: nothing to do. Call before the codec is shared.
// Errors: kUnimplemented in a build without CUDA; the encoder's
// (kFailedPrecondition for an unusable device, naming why).
absl::Status AttachCudaEncoder(int device, Codec* codec);

}  // namespace vqkv::client

#endif  // VQKV_CLIENT_GPU_ENCODER_H_
