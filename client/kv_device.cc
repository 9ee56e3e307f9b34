#include "client/kv_device.h"

#ifdef VQKV_HAVE_CUDA
#include "client/cuda/cuda_kv_device.h"
#endif

namespace vqkv::client {

absl::StatusOr<std::unique_ptr<KvDevice>> NewKvDevice(
    const PagedKvCaches& caches) {
#ifdef VQKV_HAVE_CUDA
  return NewCudaKvDevice(caches);
#else
  (void)caches;
  return absl::UnimplementedError(
      "KV caches in CUDA device memory need a build with CUDA (nvcc found "
      "at configure time); this build has none: register host caches");
#endif
}

}  // namespace vqkv::client
