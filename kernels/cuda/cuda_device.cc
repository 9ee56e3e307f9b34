#include "kernels/cuda/cuda_device.h"

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace vqkv::cuda {

absl::StatusOr<int> CudaDeviceCount() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    // Reset the runtime's last-error slot (best effort: an initialization
    // failure such as a missing driver is reported again by later calls).
    (void)cudaGetLastError();
    return absl::UnavailableError(absl::StrCat(
        "no CUDA device: cudaGetDeviceCount returned ", cudaGetErrorName(err),
        " (", cudaGetErrorString(err), ")"));
  }
  if (count < 1) {
    return absl::UnavailableError(
        "no CUDA device: cudaGetDeviceCount returned 0 devices");
  }
  return count;
}

absl::StatusOr<std::string> CudaDeviceDescription(int device) {
  cudaDeviceProp prop{};
  const cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::UnavailableError(absl::StrCat(
        "cudaGetDeviceProperties(", device, ") returned ",
        cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
  }
  return absl::StrFormat(
      "%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor,
      prop.multiProcessorCount,
      static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
}

}  // namespace vqkv::cuda
