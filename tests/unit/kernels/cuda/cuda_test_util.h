// Helpers of the CUDA kernel tests (mini_test, so they also build on a bare
// CUDA machine): skip-or-fail without a GPU, CUDA status assertions, and an
// owned device buffer.
#ifndef VQKV_TESTS_UNIT_KERNELS_CUDA_CUDA_TEST_UTIL_H_
#define VQKV_TESTS_UNIT_KERNELS_CUDA_CUDA_TEST_UTIL_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_device.h"
#include "tests/testing/mini_test.h"
#include "tests/testing/require_gpu.h"

namespace vqkv::cuda {

using ::vqkv::testing::RequireGpu;

// Skips the test when there is no GPU, or fails it when the environment sets
// VQKV_REQUIRE_GPU=1 (tests/gpu/run.sh does, so a GPU run cannot pass by
// skipping everything).
#define SKIP_WITHOUT_GPU()                                   \
  do {                                                       \
    std::string why_not_;                                    \
    if (CudaDeviceCount(&why_not_) == 0) {                   \
      if (RequireGpu()) FAIL() << why_not_;                  \
      GTEST_SKIP() << why_not_ << " (tests/gpu/run.sh runs " \
                   << "this on a GPU machine)";              \
    }                                                        \
  } while (0)

#define ASSERT_CUDA(expr) \
  ASSERT_EQ((expr), cudaSuccess) << cudaGetErrorString(cudaGetLastError())

// Owns a device allocation of n elements of T.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (cudaMalloc(&ptr_, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) {
      ptr_ = nullptr;
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  T* get() const { return ptr_; }
  cudaError_t Upload(const std::vector<T>& v) {
    return cudaMemcpy(ptr_, v.data(), v.size() * sizeof(T),
                      cudaMemcpyHostToDevice);
  }
  cudaError_t Download(std::vector<T>* v) const {
    v->resize(n_);
    return cudaMemcpy(v->data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
  }

 private:
  T* ptr_ = nullptr;
  size_t n_;
};

// Fills data[0, total) on the device by repeating its first `base` elements
// (already there), with doubling device-to-device copies: large inputs
// without a host copy of them.
template <typename T>
cudaError_t RepeatOnDevice(T* data, int64_t base, int64_t total) {
  for (int64_t filled = base; filled < total;) {
    const int64_t count = std::min(filled, total - filled);
    const cudaError_t e =
        cudaMemcpy(data + filled, data, static_cast<size_t>(count) * sizeof(T),
                   cudaMemcpyDeviceToDevice);
    if (e != cudaSuccess) return e;
    filled += count;
  }
  return cudaSuccess;
}

}  // namespace vqkv::cuda

#endif  // VQKV_TESTS_UNIT_KERNELS_CUDA_CUDA_TEST_UTIL_H_
