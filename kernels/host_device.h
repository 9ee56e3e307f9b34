// VQKV_HD marks a function that both the host compiler and nvcc compile, so
// that a CUDA kernel and its host reference (or a host test of its
// arithmetic) run the same code. Header only, no dependencies.
#ifndef VQKV_KERNELS_HOST_DEVICE_H_
#define VQKV_KERNELS_HOST_DEVICE_H_

#ifdef __CUDACC__
#define VQKV_HD __host__ __device__
#else
#define VQKV_HD
#endif

#endif  // VQKV_KERNELS_HOST_DEVICE_H_
