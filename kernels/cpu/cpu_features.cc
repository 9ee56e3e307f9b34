#include "kernels/cpu/cpu_features.h"

#include <cpuid.h>

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
  // F16C from CPUID leaf 1 (clang's __builtin_cpu_supports does not know
  // "f16c"); its VEX encoding needs the OS's AVX state support, which
  // __builtin_cpu_supports("avx") checks.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  f.f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 &&
           (ecx & bit_F16C) != 0 && __builtin_cpu_supports("avx");
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
