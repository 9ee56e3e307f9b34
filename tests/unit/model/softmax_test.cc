// SoftmaxInPlace and its scalar reference against double precision, and
// the dispatch honouring VQKV_SIMD (CMake runs this binary a second time
// with VQKV_SIMD=scalar).
#include "model/softmax.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_features.h"

namespace vqkv::model {
namespace {

TEST(SoftmaxTest, MatchesDoublePrecision) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 8.0f);
  for (int64_t n : {1, 7, 8, 9, 64, 1000}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = nd(rng);
    x[0] = -200.0f;  // far below the max: underflows to ~0
    std::vector<double> ref(x.begin(), x.end());
    const double mx = *std::max_element(ref.begin(), ref.end());
    double sum = 0;
    for (double& v : ref) sum += (v = std::exp(v - mx));
    std::vector<float> fast = x, scalar = x;
    SoftmaxInPlace(fast.data(), n);
    SoftmaxInPlaceRef(scalar.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double want = ref[i] / sum;
      // Float rounding of x - max alone costs |x - max| * 2^-24 relative.
      EXPECT_NEAR(fast[i], want, 1e-5 * want + 1e-12) << n << " " << i;
      EXPECT_NEAR(scalar[i], want, 1e-5 * want + 1e-12) << n << " " << i;
    }
  }
}

TEST(SoftmaxTest, ScalarCapSelectsTheReferenceBitForBit) {
  const char* cap = std::getenv("VQKV_SIMD");
  if (cap == nullptr || std::strcmp(cap, "scalar") != 0) {
    GTEST_SKIP() << "runs under VQKV_SIMD=scalar (the softmax_test_scalar "
                    "registration)";
  }
  ASSERT_STREQ(cpu::SimdLevelName(), "scalar");
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  std::vector<float> x(777);
  for (float& v : x) v = nd(rng);
  std::vector<float> dispatched = x, reference = x;
  SoftmaxInPlace(dispatched.data(), static_cast<int64_t>(x.size()));
  SoftmaxInPlaceRef(reference.data(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(std::memcmp(dispatched.data(), reference.data(),
                        x.size() * sizeof(float)),
            0);
}

}  // namespace
}  // namespace vqkv::model
