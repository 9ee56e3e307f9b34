// Whether this process can use a CUDA device.
//
// On a machine without a GPU (or without the driver), cudaGetDeviceCount does
// not return 0: it fails, e.g. with cudaErrorNoDevice or
// cudaErrorInsufficientDriver. CudaDeviceCount turns that into one clear
// status so binaries and tests can say "no GPU" instead of crashing.
//
// Thread safety: safe to call from any thread.
#ifndef VQKV_KERNELS_CUDA_CUDA_DEVICE_H_
#define VQKV_KERNELS_CUDA_CUDA_DEVICE_H_

#include <string>

#include "absl/status/statusor.h"

namespace vqkv::cuda {

// Number of CUDA devices, >= 1. Errors: kUnavailable when there is none,
// with the message "no CUDA device: cudaGetDeviceCount returned <error name>
// (<error string>)" (or "... returned 0 devices").
absl::StatusOr<int> CudaDeviceCount();

// "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)" for device `device`.
// Errors: kUnavailable when the device cannot be queried.
absl::StatusOr<std::string> CudaDeviceDescription(int device);

}  // namespace vqkv::cuda

#endif  // VQKV_KERNELS_CUDA_CUDA_DEVICE_H_
