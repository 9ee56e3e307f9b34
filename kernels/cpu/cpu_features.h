// Run-time CPU feature detection, for choosing SIMD kernels.
#ifndef VQKV_KERNELS_CPU_CPU_FEATURES_H_
#define VQKV_KERNELS_CPU_CPU_FEATURES_H_

namespace vqkv::cpu {

struct CpuFeatures {
  bool avx2 = false;    // AVX2 + FMA
  bool avx512 = false;  // AVX-512 F + BW + VL
  bool f16c = false;
};

// Detected once, on first call; thread-safe. Setting the environment variable
// VQKV_SIMD=scalar|avx2|avx512 before the first call caps the level used
// (never raises it above what the CPU has), so the slower paths can be
// exercised and benchmarked on any machine.
const CpuFeatures& Features();

// "avx512", "avx2" or "scalar": the widest kernel level Features() allows.
const char* SimdLevelName();

}  // namespace vqkv::cpu

#endif  // VQKV_KERNELS_CPU_CPU_FEATURES_H_
