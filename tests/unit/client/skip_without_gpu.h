// SKIP_WITHOUT_GPU() for the gtest CUDA tests of the client: skips the test
// with the reason where there is no GPU, or fails it when the run requires
// one (tests/testing/require_gpu.h: tests/gpu/run.sh sets it, so a GPU run
// cannot pass by skipping).
#ifndef VQKV_TESTS_UNIT_CLIENT_SKIP_WITHOUT_GPU_H_
#define VQKV_TESTS_UNIT_CLIENT_SKIP_WITHOUT_GPU_H_

#include <string>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_device.h"
#include "tests/testing/require_gpu.h"

#define SKIP_WITHOUT_GPU()                                                 \
  do {                                                                     \
    std::string why_not_;                                                  \
    if (::vqkv::cuda::CudaDeviceCount(&why_not_) == 0) {                   \
      if (::vqkv::testing::RequireGpu()) FAIL() << why_not_;               \
      GTEST_SKIP() << why_not_ << " (tests/gpu/run.sh runs this on a GPU " \
                   << "machine, from tests/gpu/bundle.sh's bundle)";       \
    }                                                                      \
  } while (0)

#endif  // VQKV_TESTS_UNIT_CLIENT_SKIP_WITHOUT_GPU_H_
