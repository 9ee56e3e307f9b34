// Whether this process can use a CUDA device.
//
// On a machine without a GPU (or without the driver), cudaGetDeviceCount does
// not return 0: it fails, e.g. with cudaErrorNoDevice or
// cudaErrorInsufficientDriver. CudaDeviceCount turns that into one clear
// reason so binaries and tests can say "no GPU" instead of crashing.
//
// Needs only the CUDA runtime and the C++ standard library (no Abseil), so
// the CUDA-only GPU check (tests/gpu/) builds it on a bare CUDA machine.
//
// Thread safety: safe to call from any thread.
#ifndef VQKV_KERNELS_CUDA_CUDA_DEVICE_H_
#define VQKV_KERNELS_CUDA_CUDA_DEVICE_H_

#include <string>

namespace vqkv::cuda {

// Number of CUDA devices, >= 1; or 0 with *why_not set to "no CUDA device:
// cudaGetDeviceCount returned <error name> (<error string>)" (or "...
// returned 0 devices"). why_not may be null.
int CudaDeviceCount(std::string* why_not);

// "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)" for device `device`, or
// "cudaGetDeviceProperties(<device>) returned <error>" when it cannot be
// queried (then *ok, if given, is false).
std::string CudaDeviceDescription(int device, bool* ok = nullptr);

}  // namespace vqkv::cuda

#endif  // VQKV_KERNELS_CUDA_CUDA_DEVICE_H_
