// Tensor-core greedy RVQ encode; launchers declared in rvq_cuda.cuh.
//
// Per stage, the distances of a tile of residuals to every codeword are a
// matrix product. Each warp owns 32 vectors (two 16-row m-tiles): their
// residuals stay in shared memory as float32 for the whole encode, and at
// the start of a stage they are rounded once to bf16 into the warp's A
// fragments, which stay in registers while the stage's codebook streams
// past. The codebook is read straight from global memory (L2-resident: a
// stage is K x dim x 2 bytes) in the fragment order of mma.m16n8k16
// (LaunchRvqPrepareTcCodebooks), one coalesced 8-byte load per lane per
// 16 x 8 tile. After each 8-codeword tile every lane folds its 8 scores
// (norms[k] - 2 <r, c_k>) into a short sorted candidate list per vector,
// so no score matrix is written anywhere. At the end of the stage the
// candidates of the four lanes that share a vector are rescored in float32
// against the float32 residual and codebook, and the best (ties to the
// lowest index) is subtracted from the residual, as the reference does.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/rvq_cuda.cuh"

namespace vqkv::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRowsPerWarp = 32;  // two m16 tiles
constexpr int kMTiles = kRowsPerWarp / 16;
constexpr int kRowsPerBlock = kRowsPerWarp * kWarps;
// Candidates each lane keeps per vector; a vector is rescored over the
// lists of its four lanes (each lane sees a quarter of the codewords).
constexpr int kTopPerLane = 2;
constexpr int kCandidates = 4 * kTopPerLane;
constexpr int kNoCode = INT32_MAX;

// Floats per residual row in shared memory: an odd stride spreads the
// rescoring loop's per-lane rows over all 32 banks.
__host__ __device__ constexpr int RowStride(int k_steps) {
  return k_steps * 16 + 1;
}

size_t TcSharedBytes(int k_steps) {
  return sizeof(float) * kRowsPerBlock * RowStride(k_steps) +
         sizeof(int) * kRowsPerBlock * kCandidates;
}

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// Two floats as a bf16x2 register: `lo` in the low half, as mma expects the
// lower-indexed element.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// c += a * b for one 16 x 8 x 16 tile (bf16 inputs, float32 accumulators).
__device__ __forceinline__ void MmaBf16(float (&c)[4], const uint32_t (&a)[4],
                                        uint2 b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
#else
  __trap();  // the launcher refuses devices below compute capability 8.0
#endif
}

// Inserts (s, k) into an ascending list; strict comparisons keep the first
// seen (lower index) among equal scores. NaN never enters.
__device__ __forceinline__ void Insert(float s, int k,
                                       float (&best_s)[kTopPerLane],
                                       int (&best_k)[kTopPerLane]) {
  if (!(s < best_s[kTopPerLane - 1])) return;
#pragma unroll
  for (int q = 0; q < kTopPerLane; ++q) {
    if (s < best_s[q]) {
      const float ts = best_s[q];
      const int tk = best_k[q];
      best_s[q] = s;
      best_k[q] = k;
      s = ts;
      k = tk;
    }
  }
}

// Fragment-order codebook: for stage s, 8-codeword tile t and 16-dimension
// step j, lane (g = lane / 4, q = lane % 4) holds as one uint2 the bf16
// pairs (c[8t+g][16j+2q], c[..][16j+2q+1]) and (c[..][16j+2q+8], +9), the
// B operand of mma.m16n8k16.row.col. Padding codewords and dimensions are 0.
__global__ void PrepareTcKernel(const float* __restrict__ codebooks, int stages,
                                int K, int dim, int k_steps,
                                uint2* __restrict__ out) {
  const int tiles = (K + 7) / 8;
  const int64_t total = static_cast<int64_t>(stages) * tiles * k_steps * 32;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(i % 32);
    const int j = static_cast<int>(i / 32 % k_steps);
    const int t = static_cast<int>(i / (32 * k_steps) % tiles);
    const int s =
        static_cast<int>(i / (static_cast<int64_t>(32) * k_steps * tiles));
    const int k = 8 * t + lane / 4;
    const int d0 = 16 * j + 2 * (lane % 4);
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (k < K) {
      const float* c = codebooks + (static_cast<int64_t>(s) * K + k) * dim;
      const int ds[4] = {d0, d0 + 1, d0 + 8, d0 + 9};
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = ds[e] < dim ? c[ds[e]] : 0.0f;
    }
    out[i] = make_uint2(PackBf16(v[0], v[1]), PackBf16(v[2], v[3]));
  }
}

template <int kSteps, typename In>
__global__ void __launch_bounds__(kThreads)
    RvqEncodeTcKernel(const In* __restrict__ x, int64_t n, int dim,
                      const float* __restrict__ codebooks,
                      const float* __restrict__ norms,
                      const uint2* __restrict__ tc, int stages, int K,
                      uint16_t* __restrict__ codes) {
  constexpr int kDimPad = kSteps * 16;
  constexpr int kStride = RowStride(kSteps);
  extern __shared__ float smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Warp-private: the warp's rows and their candidate lists. Warps never
  // touch each other's rows, so only __syncwarp is needed below.
  float* rs = smem + warp * kRowsPerWarp * kStride;
  int* cand = reinterpret_cast<int*>(smem + kRowsPerBlock * kStride) +
              warp * kRowsPerWarp * kCandidates;
  const int64_t row0 =
      static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp * kRowsPerWarp;
  const int rows = static_cast<int>(
      n - row0 < kRowsPerWarp ? (n - row0 > 0 ? n - row0 : 0) : kRowsPerWarp);
  if (rows == 0) return;  // warp-uniform; no block-wide barrier follows

  for (int e = lane; e < kRowsPerWarp * kDimPad; e += 32) {
    const int r = e / kDimPad, d = e % kDimPad;
    float v = 0.0f;
    if (r < rows && d < dim) v = ToFloat(x[(row0 + r) * dim + d]);
    rs[r * kStride + d] = v;
  }
  __syncwarp();

  const int g = lane / 4, q = lane % 4;
  const int tiles = (K + 7) / 8;
  const bool vec4 = (dim % 4) == 0;
  for (int s = 0; s < stages; ++s) {
    uint32_t a[kMTiles][kSteps][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int j = 0; j < kSteps; ++j) {
        const float* p0 = rs + (16 * mt + g) * kStride + 16 * j + 2 * q;
        const float* p1 = p0 + 8 * kStride;
        a[mt][j][0] = PackBf16(p0[0], p0[1]);
        a[mt][j][1] = PackBf16(p1[0], p1[1]);
        a[mt][j][2] = PackBf16(p0[8], p0[9]);
        a[mt][j][3] = PackBf16(p1[8], p1[9]);
      }
    }
    // Rows 16 mt + g + 8 h of the warp: [mt][h].
    float best_s[kMTiles][2][kTopPerLane];
    int best_k[kMTiles][2][kTopPerLane];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < kTopPerLane; ++i) {
          best_s[mt][h][i] = FLT_MAX;
          best_k[mt][h][i] = kNoCode;
        }

    const uint2* stage_tc =
        tc + static_cast<int64_t>(s) * tiles * kSteps * 32 + lane;
    const float* stage_norms = norms + static_cast<int64_t>(s) * K;
    uint2 b[kSteps];
#pragma unroll
    for (int j = 0; j < kSteps; ++j) b[j] = __ldg(stage_tc + j * 32);
    for (int t = 0; t < tiles; ++t) {
      // Next tile's operand in flight while this one multiplies.
      uint2 next[kSteps];
      if (t + 1 < tiles) {
        const uint2* p = stage_tc + static_cast<int64_t>(t + 1) * kSteps * 32;
#pragma unroll
        for (int j = 0; j < kSteps; ++j) next[j] = __ldg(p + j * 32);
      }
      float acc[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][e] = 0.0f;
#pragma unroll
      for (int j = 0; j < kSteps; ++j)
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) MmaBf16(acc[mt], a[mt][j], b[j]);

      // Accumulator e of tile mt: row 16 mt + g + 8 (e / 2), codeword
      // 8 t + 2 q + e % 2.
      const int k0 = 8 * t + 2 * q;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int k = k0 + c;
        if (k < K) {
          const float nk = __ldg(stage_norms + k);
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              Insert(nk - 2.0f * acc[mt][2 * h + c], k, best_s[mt][h],
                     best_k[mt][h]);
            }
        }
      }
      if (t + 1 < tiles) {
#pragma unroll
        for (int j = 0; j < kSteps; ++j) b[j] = next[j];
      }
    }

#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < kTopPerLane; ++i) {
          cand[(16 * mt + g + 8 * h) * kCandidates + q * kTopPerLane + i] =
              best_k[mt][h][i];
        }
    __syncwarp();

    // Rescoring: lane l owns row l. Scores in float32 with fused
    // multiply-adds over increasing dimensions, as the float32 kernel.
    const float* stage_cb = codebooks + static_cast<int64_t>(s) * K * dim;
    float* r = rs + lane * kStride;
    float best = FLT_MAX;
    int best_code = kNoCode;
    for (int i = 0; i < kCandidates; ++i) {
      const int k = cand[lane * kCandidates + i];
      if (k == kNoCode) continue;
      const float* c = stage_cb + static_cast<int64_t>(k) * dim;
      float dot = 0.0f;
      if (vec4) {
        for (int d = 0; d < dim; d += 4) {
          const float4 cv = __ldg(reinterpret_cast<const float4*>(c + d));
          dot = fmaf(r[d], cv.x, dot);
          dot = fmaf(r[d + 1], cv.y, dot);
          dot = fmaf(r[d + 2], cv.z, dot);
          dot = fmaf(r[d + 3], cv.w, dot);
        }
      } else {
        for (int d = 0; d < dim; ++d) dot = fmaf(r[d], __ldg(c + d), dot);
      }
      const float score = __ldg(stage_norms + k) - 2.0f * dot;
      if (score < best || (score == best && k < best_code)) {
        best = score;
        best_code = k;
      }
    }
    // A NaN residual has no candidate: codeword 0, as the reference.
    if (best_code == kNoCode) best_code = 0;
    if (lane < rows) {
      codes[(row0 + lane) * stages + s] = static_cast<uint16_t>(best_code);
      const float* c = stage_cb + static_cast<int64_t>(best_code) * dim;
      for (int d = 0; d < dim; ++d) r[d] -= __ldg(c + d);
    }
    __syncwarp();
  }
}

int KSteps(int dim) { return (dim + 15) / 16; }

template <int kSteps, typename In>
cudaError_t LaunchTc(const In* x, int64_t n, int dim, const float* codebooks,
                     const float* norms, const uint2* tc, int stages, int K,
                     uint16_t* codes, cudaStream_t stream) {
  const size_t smem = TcSharedBytes(kSteps);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        RvqEncodeTcKernel<kSteps, In>,
        cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  RvqEncodeTcKernel<kSteps, In>
      <<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
          x, n, dim, codebooks, norms, tc, stages, K, codes);
  return cudaGetLastError();
}

template <typename In>
cudaError_t LaunchTcForDim(const In* x, int64_t n, int dim,
                           const float* codebooks, const float* norms,
                           const uint2* tc, int stages, int K, uint16_t* codes,
                           cudaStream_t stream) {
  switch (KSteps(dim)) {
    case 1:
    case 2:
      return LaunchTc<2, In>(x, n, dim, codebooks, norms, tc, stages, K, codes,
                             stream);
    case 3:
    case 4:
      return LaunchTc<4, In>(x, n, dim, codebooks, norms, tc, stages, K, codes,
                             stream);
    case 5:
    case 6:
      return LaunchTc<6, In>(x, n, dim, codebooks, norms, tc, stages, K, codes,
                             stream);
    default:
      return LaunchTc<8, In>(x, n, dim, codebooks, norms, tc, stages, K, codes,
                             stream);
  }
}

// The k-steps the kernel uses for `dim`: the fragment layout is made for
// these (a 1..32-dim codebook is padded to 32, and so on).
int UsedKSteps(int dim) {
  const int ks = KSteps(dim);
  return ks <= 2 ? 2 : ks <= 4 ? 4 : ks <= 6 ? 6 : 8;
}

bool TensorCoresAvailable() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                             device) != cudaSuccess) {
    return false;
  }
  return major >= 8;
}

}  // namespace

size_t RvqTcCodebookBytes(int stages, int K, int dim) {
  if (stages < 1 || K < 1 || K > 65536 || dim < 1 || dim > kMaxTcEncodeDim) {
    return 0;
  }
  return static_cast<size_t>(stages) * ((K + 7) / 8) * UsedKSteps(dim) * 32 *
         sizeof(uint2);
}

cudaError_t LaunchRvqPrepareTcCodebooks(const float* d_codebooks, int stages,
                                        int K, int dim, void* d_tc,
                                        cudaStream_t stream) {
  if (RvqTcCodebookBytes(stages, K, dim) == 0 || d_codebooks == nullptr ||
      d_tc == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t total =
      static_cast<int64_t>(RvqTcCodebookBytes(stages, K, dim) / sizeof(uint2));
  const int64_t blocks = (total + 255) / 256;
  PrepareTcKernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256,
                    0, stream>>>(d_codebooks, stages, K, dim, UsedKSteps(dim),
                                 static_cast<uint2*>(d_tc));
  return cudaGetLastError();
}

cudaError_t LaunchRvqEncodeGreedyTc(const void* d_x, InputType type, int64_t n,
                                    int dim, const float* d_codebooks,
                                    const float* d_norms, const void* d_tc,
                                    int stages, int K, uint16_t* d_codes,
                                    cudaStream_t stream) {
  if (n < 0 || RvqTcCodebookBytes(stages, K, dim) == 0) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (d_x == nullptr || d_codebooks == nullptr || d_norms == nullptr ||
      d_tc == nullptr || d_codes == nullptr) {
    return cudaErrorInvalidValue;
  }
  if ((n + kRowsPerBlock - 1) / kRowsPerBlock > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  if (!TensorCoresAvailable()) return cudaErrorNotSupported;
  const auto* tc = static_cast<const uint2*>(d_tc);
  switch (type) {
    case InputType::kFloat32:
      return LaunchTcForDim(static_cast<const float*>(d_x), n, dim, d_codebooks,
                            d_norms, tc, stages, K, d_codes, stream);
    case InputType::kFloat16:
      return LaunchTcForDim(static_cast<const __half*>(d_x), n, dim,
                            d_codebooks, d_norms, tc, stages, K, d_codes,
                            stream);
    case InputType::kBFloat16:
      return LaunchTcForDim(static_cast<const __nv_bfloat16*>(d_x), n, dim,
                            d_codebooks, d_norms, tc, stages, K, d_codes,
                            stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vqkv::cuda
