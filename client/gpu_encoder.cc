#include "client/gpu_encoder.h"

#include "absl/strings/str_cat.h"
#include "kernels/vq_codec.h"

#ifdef VQKV_HAVE_CUDA
#include "client/cuda/cuda_rvq_encoder.h"
#endif

namespace vqkv::client {

absl::Status AttachCudaEncoder(int device, Codec* codec) {
  if (device < 0) return absl::OkStatus();
  auto* vq = dynamic_cast<VqCodec*>(codec);
  if (vq == nullptr) return absl::OkStatus();
#ifdef VQKV_HAVE_CUDA
  absl::StatusOr<std::shared_ptr<RvqBatchEncoder>> encoder =
      NewCudaRvqBatchEncoder(device);
  if (!encoder.ok()) {
    return absl::Status(encoder.status().code(),
                        absl::StrCat("encode_cuda_device ", device, ": ",
                                     encoder.status().message()));
  }
  vq->SetBatchEncoder(*std::move(encoder));
  return absl::OkStatus();
#else
  return absl::UnimplementedError(absl::StrCat(
      "encode_cuda_device ", device,
      ": encoding on a GPU needs a build with CUDA (nvcc found at configure "
      "time); this build has none: leave encode_cuda_device at -1"));
#endif
}

}  // namespace vqkv::client
