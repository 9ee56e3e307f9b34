#include "kernels/cpu/cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace vqkv::cpu {
namespace {

CpuFeatures Detect() {
  CpuFeatures f;
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.avx512 = __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && f.avx2;
  f.f16c = __builtin_cpu_supports("f16c");
  if (const char* cap = std::getenv("VQKV_SIMD")) {
    if (std::strcmp(cap, "scalar") == 0) {
      f.avx2 = f.avx512 = f.f16c = false;
    } else if (std::strcmp(cap, "avx2") == 0) {
      f.avx512 = false;
    }
  }
  return f;
}

}  // namespace

const CpuFeatures& Features() {
  static const CpuFeatures features = Detect();
  return features;
}

const char* SimdLevelName() {
  const CpuFeatures& f = Features();
  return f.avx512 ? "avx512" : f.avx2 ? "avx2" : "scalar";
}

}  // namespace vqkv::cpu
