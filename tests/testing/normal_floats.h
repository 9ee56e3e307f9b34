// n floats drawn from N(0, 1) with std::mt19937(seed): test input that is
// the same on every machine and run.
#ifndef VQKV_TESTS_TESTING_NORMAL_FLOATS_H_
#define VQKV_TESTS_TESTING_NORMAL_FLOATS_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace vqkv::testing {

inline std::vector<float> NormalFloats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& f : v) f = normal(rng);
  return v;
}

}  // namespace vqkv::testing

#endif  // VQKV_TESTS_TESTING_NORMAL_FLOATS_H_
