#include "kernels/cuda/cuda_device.h"

#include <cuda_runtime.h>

#include <cstdio>

namespace vqkv::cuda {
namespace {

std::string ErrorText(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) +
         ")";
}

}  // namespace

int CudaDeviceCount(std::string* why_not) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  std::string why;
  if (err != cudaSuccess) {
    // Reset the runtime's last-error slot (best effort: an initialization
    // failure such as a missing driver is reported again by later calls).
    (void)cudaGetLastError();
    why = "no CUDA device: cudaGetDeviceCount returned " + ErrorText(err);
    count = 0;
  } else if (count < 1) {
    why = "no CUDA device: cudaGetDeviceCount returned 0 devices";
    count = 0;
  }
  if (why_not != nullptr) *why_not = why;
  return count;
}

std::string CudaDeviceDescription(int device, bool* ok) {
  cudaDeviceProp prop{};
  const cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (ok != nullptr) *ok = err == cudaSuccess;
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return "cudaGetDeviceProperties(" + std::to_string(device) + ") returned " +
           ErrorText(err);
  }
  char buf[512];  // prop.name is at most 256 bytes
  std::snprintf(
      buf, sizeof(buf), "%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major,
      prop.minor, prop.multiProcessorCount,
      static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace vqkv::cuda
