// Whether a test run must have a GPU: VQKV_REQUIRE_GPU=1 (tests/gpu/run.sh
// sets it) turns "no GPU, skipped" into a failure, so a GPU run cannot pass
// by skipping everything. Shared by the gtest and mini_test CUDA tests.
#ifndef VQKV_TESTS_TESTING_REQUIRE_GPU_H_
#define VQKV_TESTS_TESTING_REQUIRE_GPU_H_

#include <cstdlib>
#include <string>

namespace vqkv::testing {

inline bool RequireGpu() {
  const char* v = std::getenv("VQKV_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_TESTING_REQUIRE_GPU_H_
