// CUDA RVQ encode and decode kernels; launchers declared in rvq_cuda.cuh.
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/rvq_cuda.cuh"

namespace vqkv::cuda {
namespace {

// ---------------------------------------------------------------------------
// Encode.
//
// One thread block encodes a tile of kTileVectors vectors through all stages.
// Their residuals stay in shared memory, transposed to [dim][vector]. For
// each stage the codebook is streamed through shared memory in slices of
// kTileCodes codewords x kChunkDims dimensions, also transposed to
// [dim][codeword]. A 16 x 16 thread grid computes a 4 x 4 register tile of
// <residual, codeword> dot products per thread (vectors 4 ty + i, codewords
// 4 tx + j), so each step over a dimension is two float4 shared-memory loads
// and 16 fused multiply-adds. Each thread keeps a running (score, index)
// minimum per vector; the 16 threads sharing a vector (half a warp) reduce it
// with shuffles. The chosen codeword is then subtracted from the residuals.
constexpr int kTileVectors = 64;
constexpr int kTileCodes = 64;
constexpr int kChunkDims = 32;
constexpr int kThreadsX = 16;  // over codewords
constexpr int kThreadsY = 16;  // over vectors
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kPerThreadV = kTileVectors / kThreadsY;  // 4
constexpr int kPerThreadK = kTileCodes / kThreadsX;    // 4
// Row strides in floats: multiples of 4 keep float4 loads 16-byte aligned;
// the extra 4 spreads the transposing stores over 8 banks instead of 1.
constexpr int kResidualStride = kTileVectors + 4;
constexpr int kCodeStride = kTileCodes + 4;

static_assert(kThreadsX == 16, "the shuffle reduction spans 16 lanes");
static_assert(kPerThreadV == 4 && kPerThreadK == 4, "float4 register tiles");

__host__ __device__ inline int PaddedDim(int dim) {
  return (dim + kChunkDims - 1) / kChunkDims * kChunkDims;
}

size_t EncodeSharedBytes(int dim) {
  return sizeof(float) *
             (static_cast<size_t>(PaddedDim(dim)) * kResidualStride +
              kChunkDims * kCodeStride) +
         sizeof(int) * kTileVectors;
}

// (score, index) order: lower score first, then lower index.
__device__ __forceinline__ bool Better(float s, int k, float best_s,
                                       int best_k) {
  return s < best_s || (s == best_s && k < best_k);
}

__global__ void __launch_bounds__(kThreads)
    RvqEncodeGreedyKernel(const float* __restrict__ x, int64_t n, int dim,
                          const float* __restrict__ codebooks,
                          const float* __restrict__ norms, int stages, int K,
                          uint16_t* __restrict__ codes) {
  extern __shared__ float4 smem4[];
  const int dim_pad = PaddedDim(dim);
  float* rs = reinterpret_cast<float*>(smem4);  // [dim_pad][kResidualStride]
  float* cs = rs + dim_pad * kResidualStride;   // [kChunkDims][kCodeStride]
  int* chosen = reinterpret_cast<int*>(cs + kChunkDims * kCodeStride);

  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kThreadsX + tx;
  const int64_t v0 = static_cast<int64_t>(blockIdx.x) * kTileVectors;
  const int tile_n =
      static_cast<int>(n - v0 < kTileVectors ? n - v0 : kTileVectors);

  // Load the residuals (= the inputs) transposed; padding dimensions and
  // vectors past n are zero and never written back.
  for (int e = tid; e < kTileVectors * dim_pad; e += kThreads) {
    const int v = e / dim_pad, d = e % dim_pad;
    float val = 0.0f;
    if (v < tile_n && d < dim) val = x[(v0 + v) * dim + d];
    rs[d * kResidualStride + v] = val;
  }
  __syncthreads();

  for (int s = 0; s < stages; ++s) {
    const float* cb = codebooks + static_cast<int64_t>(s) * K * dim;
    const float* nm = norms + static_cast<int64_t>(s) * K;
    float best_s[kPerThreadV];
    int best_k[kPerThreadV];
#pragma unroll
    for (int i = 0; i < kPerThreadV; ++i) {
      best_s[i] = FLT_MAX;
      best_k[i] = INT32_MAX;
    }

    for (int k0 = 0; k0 < K; k0 += kTileCodes) {
      float acc[kPerThreadV][kPerThreadK];
#pragma unroll
      for (int i = 0; i < kPerThreadV; ++i)
#pragma unroll
        for (int j = 0; j < kPerThreadK; ++j) acc[i][j] = 0.0f;

      for (int d0 = 0; d0 < dim_pad; d0 += kChunkDims) {
        // Stage a kTileCodes x kChunkDims slice of the codebook, reading
        // along dimensions (coalesced) and storing transposed.
        for (int e = tid; e < kTileCodes * kChunkDims; e += kThreads) {
          const int k = e / kChunkDims, dd = e % kChunkDims;
          const int gk = k0 + k, gd = d0 + dd;
          float val = 0.0f;
          if (gk < K && gd < dim) val = cb[static_cast<int64_t>(gk) * dim + gd];
          cs[dd * kCodeStride + k] = val;
        }
        __syncthreads();
#pragma unroll 8
        for (int dd = 0; dd < kChunkDims; ++dd) {
          const float4 r = *reinterpret_cast<const float4*>(
              &rs[(d0 + dd) * kResidualStride + kPerThreadV * ty]);
          const float4 c = *reinterpret_cast<const float4*>(
              &cs[dd * kCodeStride + kPerThreadK * tx]);
          const float rv[4] = {r.x, r.y, r.z, r.w};
          const float cv[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
          for (int i = 0; i < kPerThreadV; ++i)
#pragma unroll
            for (int j = 0; j < kPerThreadK; ++j)
              acc[i][j] = fmaf(rv[i], cv[j], acc[i][j]);
        }
        __syncthreads();
      }
      // The codewords a thread visits increase with j and with k0, so a
      // strict comparison keeps the lowest index among exact ties.
#pragma unroll
      for (int j = 0; j < kPerThreadK; ++j) {
        const int k = k0 + kPerThreadK * tx + j;
        if (k < K) {
          const float nk = __ldg(&nm[k]);
#pragma unroll
          for (int i = 0; i < kPerThreadV; ++i) {
            const float score = nk - 2.0f * acc[i][j];
            if (score < best_s[i]) {
              best_s[i] = score;
              best_k[i] = k;
            }
          }
        }
      }
    }

    // Reduce over the 16 lanes (tx) that share each vector: one half-warp.
#pragma unroll
    for (int i = 0; i < kPerThreadV; ++i) {
#pragma unroll
      for (int offset = kThreadsX / 2; offset > 0; offset /= 2) {
        const float os = __shfl_xor_sync(0xffffffffu, best_s[i], offset);
        const int ok = __shfl_xor_sync(0xffffffffu, best_k[i], offset);
        if (Better(os, ok, best_s[i], best_k[i])) {
          best_s[i] = os;
          best_k[i] = ok;
        }
      }
      if (tx == 0) {
        const int v = kPerThreadV * ty + i;
        // A NaN residual never beats FLT_MAX; fall back to codeword 0 so the
        // code stays in range.
        const int k = best_k[i] < K ? best_k[i] : 0;
        chosen[v] = k;
        if (v < tile_n) {
          codes[(v0 + v) * stages + s] = static_cast<uint16_t>(k);
        }
      }
    }
    __syncthreads();

    for (int e = tid; e < tile_n * dim; e += kThreads) {
      const int v = e / dim, d = e % dim;
      rs[d * kResidualStride + v] -=
          cb[static_cast<int64_t>(chosen[v]) * dim + d];
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Codebook entries as float32, from float32 or fp16 codebooks (CB).
__device__ __forceinline__ float CodebookFloat(const float* cb, int64_t i) {
  return cb[i];
}
__device__ __forceinline__ float CodebookFloat(const __half* cb, int64_t i) {
  return __half2float(cb[i]);
}
// Entries i .. i + 3 (16-byte aligned for float32, 8 for fp16).
__device__ __forceinline__ float4 CodebookFloat4(const float* cb, int64_t i) {
  return __ldg(reinterpret_cast<const float4*>(cb + i));
}
__device__ __forceinline__ float4 CodebookFloat4(const __half* cb, int64_t i) {
  const uint2 u = __ldg(reinterpret_cast<const uint2*>(cb + i));
  const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

// Decode, any shape: a block of threads covers a few vectors; threads run
// along the dimension (coalesced codebook reads) and sum the stages in order.
template <typename CB, bool kHalfOut>
__global__ void RvqDecodeKernel(const uint16_t* __restrict__ codes, int64_t n,
                                int stages, const CB* __restrict__ codebooks,
                                int K, int dim, void* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
       i < n; i += stride) {
    const uint16_t* code = codes + i * stages;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
      float acc = 0.0f;
      for (int s = 0; s < stages; ++s) {
        const int k = code[s];
        if (k < K) {
          acc += CodebookFloat(codebooks,
                               (static_cast<int64_t>(s) * K + k) * dim + d);
        }
      }
      if constexpr (kHalfOut) {
        static_cast<__half*>(out)[i * dim + d] = __float2half_rn(acc);
      } else {
        static_cast<float*>(out)[i * dim + d] = acc;
      }
    }
  }
}

// Decode, vectorised, for dim a multiple of 4 up to 128 (every head_dim the
// project meets): a group of g lanes (dim / 4 rounded up to a power of two)
// decodes kV vectors at once, each lane 4 consecutive dimensions of each
// with one 16-byte load per stage, so a warp issues one coalesced row read
// per stage and vector instead of dim / 32 scalar ones. The vectors' codes
// are read once, one stage per lane, and handed round the group by
// shuffles. kV > 1 puts kV independent gathers in flight per lane and
// stage: the kernel waits on each gather's dependent chain (shuffle,
// address, load) more than on L2 bytes (docs/CUDA.md, "Decode"). Each
// element still sums its stages in increasing order: the results are the
// scalar kernel's, bit for bit, whatever kV.
template <typename CB, bool kHalfOut, int kV>
__global__ void RvqDecodeVec4Kernel(const uint16_t* __restrict__ codes,
                                    int64_t n, int stages,
                                    const CB* __restrict__ codebooks, int K,
                                    int dim, int g, void* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int sub = lane % g;     // this lane's 4 dimensions: 4 sub ..
  const int per_warp = 32 / g;  // vectors a warp decodes per kV
  const int64_t warps_per_block = blockDim.x / 32;
  const int64_t warp = blockIdx.x * warps_per_block + threadIdx.x / 32;
  const int64_t step = gridDim.x * warps_per_block * per_warp * kV;
  const bool dims_active = 4 * sub < dim;
  // The loop bounds are the same for every lane of a warp, so the shuffles
  // see all 32 lanes.
  for (int64_t base = warp * per_warp * kV; base < n; base += step) {
    int64_t i[kV];
    bool valid[kV], active[kV];
    float4 acc[kV];
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      i[v] = base + v * per_warp + lane / g;
      valid[v] = i[v] < n;
      active[v] = valid[v] && dims_active;
      acc[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    for (int s0 = 0; s0 < stages; s0 += g) {
      const int m = min(g, stages - s0);
      int own[kV];
#pragma unroll
      for (int v = 0; v < kV; ++v) {
        own[v] = valid[v] && sub < m ? codes[i[v] * stages + s0 + sub] : 0;
      }
#pragma unroll(8 / kV)
      for (int j = 0; j < m; ++j) {
        int k[kV];
        float4 w[kV];
#pragma unroll
        for (int v = 0; v < kV; ++v) {
          k[v] = __shfl_sync(0xffffffffu, own[v], j, g);
          w[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
          if (active[v] && k[v] < K) {
            w[v] = CodebookFloat4(
                codebooks,
                (static_cast<int64_t>(s0 + j) * K + k[v]) * dim + 4 * sub);
          }
        }
#pragma unroll
        for (int v = 0; v < kV; ++v) {
          // Skipped, not added as zeros: -0 + 0 is +0.
          if (active[v] && k[v] < K) {
            acc[v].x += w[v].x;
            acc[v].y += w[v].y;
            acc[v].z += w[v].z;
            acc[v].w += w[v].w;
          }
        }
      }
    }
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      if (!active[v]) continue;
      const int64_t at = i[v] * dim + 4 * sub;
      if constexpr (kHalfOut) {
        __half2* o = reinterpret_cast<__half2*>(static_cast<__half*>(out) + at);
        o[0] = __halves2half2(__float2half_rn(acc[v].x),
                              __float2half_rn(acc[v].y));
        o[1] = __halves2half2(__float2half_rn(acc[v].z),
                              __float2half_rn(acc[v].w));
      } else {
        *reinterpret_cast<float4*>(static_cast<float*>(out) + at) = acc[v];
      }
    }
  }
}

bool ValidCommon(int64_t n, int stages, int K, int dim) {
  return n >= 0 && stages >= 1 && K >= 1 && K <= 65536 && dim >= 1;
}

// The vectorised kernel with kV vectors per lane group.
template <typename CB, bool kHalfOut, int kV>
void LaunchVec4(const uint16_t* d_codes, int64_t n, int stages,
                const CB* d_codebooks, int K, int dim, int g, void* d_out,
                cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t per_block = (kThreads / 32) * (32 / g) * kV;
  const int64_t needed = (n + per_block - 1) / per_block;
  const int blocks = static_cast<int>(needed < 65535 * 8 ? needed : 65535 * 8);
  RvqDecodeVec4Kernel<CB, kHalfOut, kV><<<blocks, kThreads, 0, stream>>>(
      d_codes, n, stages, d_codebooks, K, dim, g, d_out);
}

// vectors_in_flight: kV of the vectorised kernel (1, 2 or 4).
template <typename CB, bool kHalfOut>
cudaError_t LaunchDecode(const uint16_t* d_codes, int64_t n, int stages,
                         const CB* d_codebooks, int K, int dim, void* d_out,
                         cudaStream_t stream, int vectors_in_flight = 1) {
  if (!ValidCommon(n, stages, K, dim)) return cudaErrorInvalidValue;
  if (vectors_in_flight != 1 && vectors_in_flight != 2 &&
      vectors_in_flight != 4) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (d_codes == nullptr || d_codebooks == nullptr || d_out == nullptr) {
    return cudaErrorInvalidValue;
  }
  // The vectorised kernel where rows and outputs are 16-byte (8 for fp16)
  // aligned; else the scalar one.
  const size_t out_align = kHalfOut ? 8 : 16;
  if (dim % 4 == 0 && dim <= 128 &&
      reinterpret_cast<uintptr_t>(d_codebooks) % (4 * sizeof(CB)) == 0 &&
      reinterpret_cast<uintptr_t>(d_out) % out_align == 0) {
    int g = 1;
    while (g < dim / 4) g *= 2;
    if (vectors_in_flight == 4) {
      LaunchVec4<CB, kHalfOut, 4>(d_codes, n, stages, d_codebooks, K, dim, g,
                                  d_out, stream);
    } else if (vectors_in_flight == 2) {
      LaunchVec4<CB, kHalfOut, 2>(d_codes, n, stages, d_codebooks, K, dim, g,
                                  d_out, stream);
    } else {
      LaunchVec4<CB, kHalfOut, 1>(d_codes, n, stages, d_codebooks, K, dim, g,
                                  d_out, stream);
    }
    return cudaGetLastError();
  }
  // 256 threads: x along the dimension (a multiple of the warp size, at most
  // 256), y over vectors.
  int bx = (dim + 31) / 32 * 32;
  if (bx > 256) bx = 256;
  const int by = 256 / bx;
  const int64_t blocks_needed = (n + by - 1) / by;
  const int blocks =
      static_cast<int>(blocks_needed < 65535 * 8 ? blocks_needed : 65535 * 8);
  RvqDecodeKernel<CB, kHalfOut><<<blocks, dim3(bx, by), 0, stream>>>(
      d_codes, n, stages, d_codebooks, K, dim, d_out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchRvqEncodeGreedy(const float* d_x, int64_t n, int dim,
                                  const float* d_codebooks,
                                  const float* d_norms, int stages, int K,
                                  uint16_t* d_codes, cudaStream_t stream) {
  if (!ValidCommon(n, stages, K, dim) || dim > kMaxEncodeDim) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (d_x == nullptr || d_codebooks == nullptr || d_norms == nullptr ||
      d_codes == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t blocks = (n + kTileVectors - 1) / kTileVectors;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  const size_t smem = EncodeSharedBytes(dim);
  if (smem > 48 * 1024) {
    // Above 48 KiB, dynamic shared memory must be opted into per kernel.
    const cudaError_t err = cudaFuncSetAttribute(
        RvqEncodeGreedyKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  RvqEncodeGreedyKernel<<<static_cast<unsigned>(blocks),
                          dim3(kThreadsX, kThreadsY), smem, stream>>>(
      d_x, n, dim, d_codebooks, d_norms, stages, K, d_codes);
  return cudaGetLastError();
}

cudaError_t LaunchRvqDecode(const uint16_t* d_codes, int64_t n, int stages,
                            const float* d_codebooks, int K, int dim,
                            float* d_out, cudaStream_t stream) {
  return LaunchDecode<float, false>(d_codes, n, stages, d_codebooks, K, dim,
                                    d_out, stream);
}

cudaError_t LaunchRvqDecodeHalf(const uint16_t* d_codes, int64_t n, int stages,
                                const float* d_codebooks, int K, int dim,
                                uint16_t* d_out, cudaStream_t stream) {
  return LaunchDecode<float, true>(d_codes, n, stages, d_codebooks, K, dim,
                                   d_out, stream);
}

cudaError_t LaunchRvqDecodeHalfCodebooks(const uint16_t* d_codes, int64_t n,
                                         int stages,
                                         const uint16_t* d_codebooks_f16, int K,
                                         int dim, uint16_t* d_out,
                                         cudaStream_t stream) {
  return LaunchDecode<__half, true>(
      d_codes, n, stages, reinterpret_cast<const __half*>(d_codebooks_f16), K,
      dim, d_out, stream);
}

cudaError_t LaunchRvqDecodeHalfInFlight(const uint16_t* d_codes, int64_t n,
                                        int stages, const float* d_codebooks,
                                        int K, int dim, int vectors_in_flight,
                                        uint16_t* d_out, cudaStream_t stream) {
  return LaunchDecode<float, true>(d_codes, n, stages, d_codebooks, K, dim,
                                   d_out, stream, vectors_in_flight);
}

}  // namespace vqkv::cuda
