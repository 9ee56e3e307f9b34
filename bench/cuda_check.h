// CHECK_CUDA(expr) for the CUDA benchmarks' bool-returning steps: on an
// error it prints the call, file, line and CUDA message to stderr and
// returns false. Only the toolkit and the C++ standard library, like the
// benchmarks (they also build in the CUDA-only GPU check, tests/gpu/).
#ifndef VQKV_BENCH_CUDA_CHECK_H_
#define VQKV_BENCH_CUDA_CHECK_H_

#include <cuda_runtime.h>

#include <cstdio>

#define CHECK_CUDA(expr)                                                 \
  do {                                                                   \
    const cudaError_t err_ = (expr);                                     \
    if (err_ != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, \
                   #expr, cudaGetErrorString(err_));                     \
      return false;                                                      \
    }                                                                    \
  } while (0)

#endif  // VQKV_BENCH_CUDA_CHECK_H_
