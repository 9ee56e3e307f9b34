// Tensor-core greedy RVQ encode; launchers declared in rvq_cuda.cuh.
//
// Per stage, the distances of a tile of residuals to every codeword are a
// matrix product. A block of 8 warps encodes 128 vectors; each warp owns 16
// of them (one 16-row m-tile): their residuals stay in shared memory as
// float32 for the whole encode, and at the start of a stage they are
// rounded once to bf16 into the warp's A fragments, which stay in registers
// while the stage's codebook streams past. The codebook, prepared once in
// the fragment order of mma.m16n8k16 (LaunchRvqPrepareTcCodebooks), streams
// through shared memory in chunks of 64 codewords with their norms, copied
// asynchronously (cp.async) one chunk ahead, so all eight warps share each
// load from L2; a lane's operand for a 16 x 8 tile is then one 8-byte
// shared load. After each 8-codeword tile every lane folds its scores
// (norms[k] - 2 <r, c_k>) into a short sorted candidate list per vector, so
// no score matrix is written anywhere. At the end of the stage the owner
// lane of each vector takes the candidates of the four lanes that share it:
// those within twice the bf16 error bound of the lowest are the only ones
// that can be the nearest among them; one is taken as it is, several are
// rescored in float32 against the float32 residual and codebook (ties to
// the lowest index). The pick is subtracted from the residual, as the
// reference does; the next stage's first chunk is already in flight.
//
// Variants (TcEncodeVariant): candidates in a sorted (score, code) list or
// as one 32-bit key per score and code (tc_candidate_key.h), which takes a
// third of the instructions per score (the candidates kept and the choice
// among them are the same up to the keys' truncated scores); and one m16
// tile per warp (8 warps) or two (4 warps, each codebook fragment feeding
// two products).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/cuda/rvq_cuda.cuh"
#include "kernels/cuda/tc_candidate_key.h"

namespace vqkv::cuda {
namespace {

// Rows (vectors) per block in every variant: the residual rows in shared
// memory limit the blocks per multiprocessor. With one m16 tile per warp
// (8 warps) more warps hide the latency of each warp's chain of products
// and candidate updates; with two (4 warps) each codebook fragment loaded
// from shared memory feeds two products, and every lane owns a row in the
// end-of-stage choice.
constexpr int kRowsPerBlock = 128;

// A TcEncodeVariant's kernel shape.
template <int kVariant>
struct TcVariantShape {
  static constexpr bool kPacked =
      kVariant != static_cast<int>(TcEncodeVariant::kSortedLists);
  static constexpr int kMTiles =
      kVariant == static_cast<int>(TcEncodeVariant::kPackedKeysWide) ? 2 : 1;
  static constexpr int kRowsPerWarp = 16 * kMTiles;
  static constexpr int kThreads = 32 * (kRowsPerBlock / kRowsPerWarp);
};
// Candidates each lane keeps per vector; a vector is rescored over the
// lists of its four lanes (each lane sees a quarter of the codewords).
constexpr int kTopPerLane = 2;
constexpr int kCandidates = 4 * kTopPerLane;
// A row's candidate codes, then their bf16-product scores (as float bits),
// or (packed keys) its candidate keys; the odd stride spreads the rows over
// the banks.
constexpr int kCandStride = 2 * kCandidates + 1;
constexpr float kScoreErrorPerNorm = kTcScoreErrorPerNorm;
constexpr int kNoCode = INT32_MAX;

// Floats per residual row in shared memory: an odd stride spreads the
// rescoring loop's per-lane rows over all 32 banks.
__host__ __device__ constexpr int RowStride(int k_steps) {
  return k_steps * 16 + 1;
}

// Codeword tiles (of 8) per shared-memory chunk of the codebook.
constexpr int kChunkTiles = 8;

__host__ __device__ constexpr int ChunkUint2s(int k_steps) {
  return kChunkTiles * k_steps * 32;
}

// Residuals, candidate lists, two codebook chunks, then the two chunks'
// norms. Each part's size is a multiple of 16 bytes (128 rows), so the
// chunks are 16-byte aligned.
size_t TcSharedBytes(int k_steps) {
  return sizeof(float) * kRowsPerBlock * RowStride(k_steps) +
         sizeof(int) * ((kRowsPerBlock * kCandStride + 3) / 4 * 4) +
         sizeof(uint2) * 2 * ChunkUint2s(k_steps) +
         sizeof(float) * 2 * kChunkTiles * 8;
}

__device__ __forceinline__ void CpAsync4(void* shared_dst,
                                         const void* global_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst =
      static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst),
               "l"(global_src));
#else
  __trap();
#endif
}

// 16 bytes from global to shared memory without passing through registers;
// completes at CpAsyncWait.
__device__ __forceinline__ void CpAsync16(void* shared_dst,
                                          const void* global_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst =
      static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst),
               "l"(global_src));
#else
  __trap();
#endif
}

__device__ __forceinline__ void CpAsyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most `kPending` of this thread's committed groups are
// still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
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

// d = c + a * b: the first product of a chain, which reads its start from
// `c` instead of first copying it into the accumulators.
__device__ __forceinline__ void MmaBf16From(float (&d)[4],
                                            const uint32_t (&a)[4], uint2 b,
                                            float c0, float c1, float c2,
                                            float c3) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y), "f"(c0),
        "f"(c1), "f"(c2), "f"(c3));
#else
  __trap();
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

// <r, c> in float32, fused multiply-adds over increasing dimensions (the
// float32 kernel's order). r is a shared-memory row, c a codeword in global
// memory; the loop is unrolled to kDimPad so the codeword's loads are all in
// flight at once.
template <int kDimPad>
__device__ __forceinline__ float Dot(const float* r, const float* c, int dim) {
  float dot = 0.0f;
  if (dim % 4 == 0) {
#pragma unroll
    for (int d = 0; d < kDimPad; d += 4) {
      if (d < dim) {
        const float4 cv = __ldg(reinterpret_cast<const float4*>(c + d));
        dot = fmaf(r[d], cv.x, dot);
        dot = fmaf(r[d + 1], cv.y, dot);
        dot = fmaf(r[d + 2], cv.z, dot);
        dot = fmaf(r[d + 3], cv.w, dot);
      }
    }
  } else {
    for (int d = 0; d < dim; ++d) dot = fmaf(r[d], __ldg(c + d), dot);
  }
  return dot;
}

// r -= c (as the reference: one float subtraction per element); returns
// the new ||r||^2.
template <int kDimPad>
__device__ __forceinline__ float Subtract(float* r, const float* c, int dim) {
  float rr = 0.0f;
  if (dim % 4 == 0) {
#pragma unroll
    for (int d = 0; d < kDimPad; d += 4) {
      if (d < dim) {
        const float4 cv = __ldg(reinterpret_cast<const float4*>(c + d));
        r[d] -= cv.x;
        r[d + 1] -= cv.y;
        r[d + 2] -= cv.z;
        r[d + 3] -= cv.w;
        rr = fmaf(r[d], r[d], rr);
        rr = fmaf(r[d + 1], r[d + 1], rr);
        rr = fmaf(r[d + 2], r[d + 2], rr);
        rr = fmaf(r[d + 3], r[d + 3], rr);
      }
    }
  } else {
    for (int d = 0; d < dim; ++d) {
      r[d] -= __ldg(c + d);
      rr = fmaf(r[d], r[d], rr);
    }
  }
  return rr;
}

// Encodes rows [block * kRowsPerBlock, +kRowsPerBlock) of x as the variant
// kVariant (a TcEncodeVariant) does. Called by every thread of the block (it
// synchronises the block).
template <int kSteps, typename In, int kVariant>
__device__ __forceinline__ void EncodeTcBlock(
    const In* __restrict__ x, int64_t n, int dim,
    const float* __restrict__ codebooks, const float* __restrict__ norms,
    const uint2* __restrict__ tc, int stages, int K,
    uint16_t* __restrict__ codes, int64_t block) {
  constexpr int kDimPad = kSteps * 16;
  constexpr int kStride = RowStride(kSteps);
  constexpr int kChunk = ChunkUint2s(kSteps);
  using Shape = TcVariantShape<kVariant>;
  constexpr bool kPacked = Shape::kPacked;
  constexpr int kMTiles = Shape::kMTiles;
  constexpr int kRowsPerWarp = Shape::kRowsPerWarp;
  constexpr int kThreads = Shape::kThreads;
  static_assert(kPacked || kMTiles == 1, "sorted lists: one m-tile a warp");
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // The warp's own rows and candidate lists: only __syncwarp guards them.
  float* rs = smem + warp * kRowsPerWarp * kStride;
  int* cand_base = reinterpret_cast<int*>(smem + kRowsPerBlock * kStride);
  int* cand = cand_base + warp * kRowsPerWarp * kCandStride;
  // The codebook chunks, shared by the block: guarded by __syncthreads.
  uint2* chunk_buf = reinterpret_cast<uint2*>(
      cand_base + (kRowsPerBlock * kCandStride + 3) / 4 * 4);
  float* norm_buf = reinterpret_cast<float*>(chunk_buf + 2 * kChunk);
  // Lane l < kRowsPerWarp rescores and updates row l.
  const bool owns_row = lane < kRowsPerWarp;

  const int64_t row0 = block * kRowsPerBlock + warp * kRowsPerWarp;
  const int rows = static_cast<int>(
      n - row0 < kRowsPerWarp ? (n - row0 > 0 ? n - row0 : 0) : kRowsPerWarp);
  for (int e = lane; e < kRowsPerWarp * kDimPad; e += 32) {
    const int r = e / kDimPad, d = e % kDimPad;
    float v = 0.0f;
    if (r < rows && d < dim) v = ToFloat(x[(row0 + r) * dim + d]);
    rs[r * kStride + d] = v;
  }
  __syncwarp();
  // ||r||^2 of row `lane`, for the error bound of its scores.
  float rr = 0.0f;
  if (owns_row) {
    for (int d = 0; d < dim; ++d) {
      rr = fmaf(rs[lane * kStride + d], rs[lane * kStride + d], rr);
    }
  }

  const int tiles = (K + 7) / 8;
  const int chunks = (tiles + kChunkTiles - 1) / kChunkTiles;
  const int code_bits = TcKeyCodeBits(tiles * 8);
  const uint32_t score_mask = TcKeyScoreMask(code_bits);
  const int64_t total_chunks = static_cast<int64_t>(stages) * chunks;
  // Chunk i of the whole encode (stage i / chunks) into buffer i % 2.
  auto fetch = [&](int64_t i) {
    const int s = static_cast<int>(i / chunks),
              c = static_cast<int>(i % chunks);
    const int t0 = c * kChunkTiles;
    const int nt = tiles - t0 < kChunkTiles ? tiles - t0 : kChunkTiles;
    const uint2* src =
        tc + (static_cast<int64_t>(s) * tiles + t0) * kSteps * 32;
    uint2* dst = chunk_buf + (i & 1) * kChunk;
    for (int p = threadIdx.x; p < nt * kSteps * 16; p += kThreads) {
      CpAsync16(dst + 2 * p, src + 2 * p);
    }
    const int k = t0 * 8 + static_cast<int>(threadIdx.x);
    if (threadIdx.x < kChunkTiles * 8 && k < K) {
      CpAsync4(norm_buf + (i & 1) * kChunkTiles * 8 + threadIdx.x,
               norms + static_cast<int64_t>(s) * K + k);
    } else if (threadIdx.x < nt * 8) {
      // The last tile's padding codewords (zero in the tensor-core copy):
      // an infinite norm keeps their keys above every real codeword's.
      norm_buf[(i & 1) * kChunkTiles * 8 + threadIdx.x] = INFINITY;
    }
    CpAsyncCommit();
  };
  fetch(0);

  const int g = lane / 4, q = lane % 4;
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
    uint32_t first[kMTiles][2], second[kMTiles][2];
    // Packed keys: -||r||^2 / 2 of those rows, from their owner lanes, starts
    // the accumulators, so that scores are squared distances (>= 0).
    float half_rr[kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int i = 0; i < kTopPerLane; ++i) {
          best_s[mt][h][i] = FLT_MAX;
          best_k[mt][h][i] = kNoCode;
        }
        first[mt][h] = second[mt][h] = kTcNoKey;
        half_rr[mt][h] = 0.0f;
        if constexpr (kPacked) {
          half_rr[mt][h] =
              -0.5f * __shfl_sync(0xffffffffu, rr, 16 * mt + g + 8 * h);
        }
      }

    const float* stage_norms = norms + static_cast<int64_t>(s) * K;
    for (int c = 0; c < chunks; ++c) {
      const int64_t i = static_cast<int64_t>(s) * chunks + c;
      if (i + 1 < total_chunks) {
        fetch(i + 1);
        CpAsyncWait<1>();
      } else {
        CpAsyncWait<0>();
      }
      __syncthreads();  // chunk i has landed for every thread's copies
      const uint2* chunk = chunk_buf + (i & 1) * kChunk + lane;
      const float* chunk_norms = norm_buf + (i & 1) * kChunkTiles * 8;
      const int t0 = c * kChunkTiles;
      const int nt = tiles - t0 < kChunkTiles ? tiles - t0 : kChunkTiles;
      for (int tl = 0; tl < nt; ++tl) {
        uint2 b[kSteps];
#pragma unroll
        for (int j = 0; j < kSteps; ++j) b[j] = chunk[(tl * kSteps + j) * 32];
        // Even and odd k-steps accumulate apart: two independent chains
        // per m-tile keep the tensor pipe busy.
        float acc[2][kMTiles][4];
        if constexpr (kPacked) {
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) {
            const float h0 = half_rr[mt][0], h1 = half_rr[mt][1];
            MmaBf16From(acc[0][mt], a[mt][0], b[0], h0, h0, h1, h1);
            MmaBf16From(acc[1][mt], a[mt][1], b[1], 0.0f, 0.0f, 0.0f, 0.0f);
          }
#pragma unroll
          for (int j = 2; j < kSteps; ++j)
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) {
              MmaBf16(acc[j % 2][mt], a[mt][j], b[j]);
            }
          // Accumulator e of m-tile mt: row 16 mt + g + 8 (e / 2), codeword
          // 8 t + 2 q + e % 2; padding codewords score +inf.
          const float2 nk =
              *reinterpret_cast<const float2*>(chunk_norms + 8 * tl + 2 * q);
          const uint32_t k0 = 8 * (t0 + tl) + 2 * q;
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float dot = acc[0][mt][e] + acc[1][mt][e];
              const uint32_t key =
                  TcMakeKey(fmaf(-2.0f, dot, e % 2 == 0 ? nk.x : nk.y),
                            score_mask, k0 + e % 2);
              TcPushKey(key, first[mt][e / 2], second[mt][e / 2]);
            }
        } else {
#pragma unroll
          for (int par = 0; par < 2; ++par)
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
              for (int e = 0; e < 4; ++e) acc[par][mt][e] = 0.0f;
#pragma unroll
          for (int j = 0; j < kSteps; ++j)
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) {
              MmaBf16(acc[j % 2][mt], a[mt][j], b[j]);
            }

          // Accumulator e of m-tile mt: row 16 mt + g + 8 (e / 2), codeword
          // 8 t + 2 q + e % 2.
          const int k0 = 8 * (t0 + tl) + 2 * q;
#pragma unroll
          for (int cc = 0; cc < 2; ++cc) {
            const int k = k0 + cc;
            if (k < K) {
              const float nk = chunk_norms[8 * tl + 2 * q + cc];
#pragma unroll
              for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                  const float dot =
                      acc[0][mt][2 * h + cc] + acc[1][mt][2 * h + cc];
                  Insert(nk - 2.0f * dot, k, best_s[mt][h], best_k[mt][h]);
                }
            }
          }
        }
      }
      __syncthreads();  // buffer i % 2 is free for chunk i + 2
    }

#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int* row_cand = cand + (16 * mt + g + 8 * h) * kCandStride;
        if constexpr (kPacked) {
          static_assert(kTopPerLane == 2, "packed keys keep two per lane");
          row_cand[q * 2] = static_cast<int>(first[mt][h]);
          row_cand[q * 2 + 1] = static_cast<int>(second[mt][h]);
        } else {
#pragma unroll
          for (int i = 0; i < kTopPerLane; ++i) {
            row_cand[q * kTopPerLane + i] = best_k[mt][h][i];
            row_cand[kCandidates + q * kTopPerLane + i] =
                __float_as_int(best_s[mt][h][i]);
          }
        }
      }
    __syncwarp();

    if (kPacked && owns_row) {
      const float* stage_cb = codebooks + static_cast<int64_t>(s) * K * dim;
      float* r = rs + lane * kStride;
      const int best_code = TcPickFromKeys(
          reinterpret_cast<const uint32_t*>(cand + lane * kCandStride),
          kCandidates, K, code_bits, rr,
          [&](int k) { return __ldg(stage_norms + k); },
          [&](int k) {
            return __ldg(stage_norms + k) -
                   2.0f * Dot<kDimPad>(
                              r, stage_cb + static_cast<int64_t>(k) * dim, dim);
          });
      if (lane < rows) {
        codes[(row0 + lane) * stages + s] = static_cast<uint16_t>(best_code);
        rr = Subtract<kDimPad>(
            r, stage_cb + static_cast<int64_t>(best_code) * dim, dim);
      }
    }

    // Lane l < kRowsPerWarp decides row l. Only candidates whose bf16-product
    // score is within twice the error bound of the lowest can be the float32
    // best; when that is one candidate (the common case), it is the pick. Else
    // those few are rescored in float32 with fused multiply-adds over
    // increasing dimensions, as the float32 kernel, ties to the lowest index.
    if (!kPacked && owns_row) {
      const float* stage_cb = codebooks + static_cast<int64_t>(s) * K * dim;
      float* r = rs + lane * kStride;
      const int* row_cand = cand + lane * kCandStride;
      float lowest = FLT_MAX, max_norm = 0.0f;
      for (int i = 0; i < kCandidates; ++i) {
        const int k = row_cand[i];
        if (k == kNoCode) continue;
        lowest = fminf(lowest, __int_as_float(row_cand[kCandidates + i]));
        max_norm = fmaxf(max_norm, __ldg(stage_norms + k));
      }
      const float cutoff =
          lowest + 2.0f * kScoreErrorPerNorm * sqrtf(rr * max_norm);
      int contenders = 0, contender = kNoCode;
      for (int i = 0; i < kCandidates; ++i) {
        const int k = row_cand[i];
        if (k != kNoCode &&
            __int_as_float(row_cand[kCandidates + i]) <= cutoff) {
          ++contenders;
          contender = k;
        }
      }
      // No candidate at all: a NaN residual; codeword 0, as the reference.
      int best_code = contenders == 0 ? 0 : contender;
      if (contenders > 1) {
        float best = FLT_MAX;
        best_code = kNoCode;
        for (int i = 0; i < kCandidates; ++i) {
          const int k = row_cand[i];
          if (k == kNoCode ||
              !(__int_as_float(row_cand[kCandidates + i]) <= cutoff)) {
            continue;
          }
          const float score =
              __ldg(stage_norms + k) -
              2.0f * Dot<kDimPad>(r, stage_cb + static_cast<int64_t>(k) * dim,
                                  dim);
          if (score < best || (score == best && k < best_code)) {
            best = score;
            best_code = k;
          }
        }
        if (best_code == kNoCode) best_code = contender;  // scores overflowed
      }
      if (lane < rows) {
        codes[(row0 + lane) * stages + s] = static_cast<uint16_t>(best_code);
        rr = Subtract<kDimPad>(
            r, stage_cb + static_cast<int64_t>(best_code) * dim, dim);
      }
    }
    __syncwarp();
  }
}

template <int kSteps, typename In, int kVariant>
__global__ void __launch_bounds__(TcVariantShape<kVariant>::kThreads)
    RvqEncodeTcKernel(const In* __restrict__ x, int64_t n, int dim,
                      const float* __restrict__ codebooks,
                      const float* __restrict__ norms,
                      const uint2* __restrict__ tc, int stages, int K,
                      uint16_t* __restrict__ codes) {
  EncodeTcBlock<kSteps, In, kVariant>(x, n, dim, codebooks, norms, tc, stages,
                                      K, codes, blockIdx.x);
}

// A batch job and the first grid block it takes.
struct BatchEntry {
  RvqTcJob job;
  int64_t first_block;
};

template <int kSteps, typename In, int kVariant>
__global__ void __launch_bounds__(TcVariantShape<kVariant>::kThreads)
    RvqEncodeTcBatchKernel(const BatchEntry* __restrict__ entries, int count) {
  // The job whose blocks include this one: the last entry starting at or
  // before it (binary search; first_block ascends).
  const int64_t b = blockIdx.x;
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (entries[mid].first_block <= b) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const RvqTcJob& j = entries[lo].job;
  EncodeTcBlock<kSteps, In, kVariant>(
      static_cast<const In*>(j.x), j.n, j.dim, j.codebooks, j.norms,
      static_cast<const uint2*>(j.tc), j.stages, j.K, j.codes,
      b - entries[lo].first_block);
}

int KSteps(int dim) { return (dim + 15) / 16; }

// The k-steps the kernel uses for `dim`: the fragment layout is made for
// these (a 1..32-dim codebook is padded to 32, and so on).
int UsedKSteps(int dim) {
  const int ks = KSteps(dim);
  return ks <= 2 ? 2 : ks <= 4 ? 4 : ks <= 6 ? 6 : 8;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls launch(std::integral_constant<int, kSteps>{}, TypeTag<In>{},
// std::integral_constant<int, kVariant>{}) with the kernel instance's
// k-steps (`k_steps`, as UsedKSteps gives), input type and variant, so each
// launcher is written once for every instance.
template <typename F>
cudaError_t ForKernelInstance(int k_steps, InputType type,
                              TcEncodeVariant variant, F launch) {
  auto with_type = [&](auto steps, auto tag) -> cudaError_t {
    switch (variant) {
      case TcEncodeVariant::kSortedLists:
        return launch(steps, tag, std::integral_constant<int, 0>{});
      case TcEncodeVariant::kPackedKeys:
        return launch(steps, tag, std::integral_constant<int, 1>{});
      case TcEncodeVariant::kPackedKeysWide:
        return launch(steps, tag, std::integral_constant<int, 2>{});
    }
    return cudaErrorInvalidValue;
  };
  auto with_steps = [&](auto steps) -> cudaError_t {
    switch (type) {
      case InputType::kFloat32:
        return with_type(steps, TypeTag<float>{});
      case InputType::kFloat16:
        return with_type(steps, TypeTag<__half>{});
      case InputType::kBFloat16:
        return with_type(steps, TypeTag<__nv_bfloat16>{});
    }
    return cudaErrorInvalidValue;
  };
  switch (k_steps) {
    case 2:
      return with_steps(std::integral_constant<int, 2>{});
    case 4:
      return with_steps(std::integral_constant<int, 4>{});
    case 6:
      return with_steps(std::integral_constant<int, 6>{});
    default:
      return with_steps(std::integral_constant<int, 8>{});
  }
}

// Above 48 KiB, dynamic shared memory must be opted into per kernel.
template <typename Kernel>
cudaError_t AllowSharedBytes(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel,
                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

bool ValidVariant(TcEncodeVariant v) {
  return v == TcEncodeVariant::kSortedLists ||
         v == TcEncodeVariant::kPackedKeys ||
         v == TcEncodeVariant::kPackedKeysWide;
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
                                    cudaStream_t stream,
                                    TcEncodeVariant variant) {
  if (n < 0 || RvqTcCodebookBytes(stages, K, dim) == 0 ||
      !ValidVariant(variant)) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (d_x == nullptr || d_codebooks == nullptr || d_norms == nullptr ||
      d_tc == nullptr || d_codes == nullptr ||
      reinterpret_cast<uintptr_t>(d_tc) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  if ((n + kRowsPerBlock - 1) / kRowsPerBlock > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  if (!TensorCoresAvailable()) return cudaErrorNotSupported;
  const auto* tc = static_cast<const uint2*>(d_tc);
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  return ForKernelInstance(
      UsedKSteps(dim), type, variant,
      [&](auto steps, auto tag, auto kind) -> cudaError_t {
        constexpr int kSteps = decltype(steps)::value;
        using In = typename decltype(tag)::type;
        constexpr int kVariant = decltype(kind)::value;
        const size_t smem = TcSharedBytes(kSteps);
        const cudaError_t err =
            AllowSharedBytes(RvqEncodeTcKernel<kSteps, In, kVariant>, smem);
        if (err != cudaSuccess) return err;
        RvqEncodeTcKernel<kSteps, In, kVariant>
            <<<static_cast<unsigned>(blocks),
               TcVariantShape<kVariant>::kThreads, smem, stream>>>(
                static_cast<const In*>(d_x), n, dim, d_codebooks, d_norms, tc,
                stages, K, d_codes);
        return cudaGetLastError();
      });
}

int64_t RvqTcJobBlocks(int64_t n) {
  return n <= 0 ? 0 : (n + kRowsPerBlock - 1) / kRowsPerBlock;
}

size_t RvqTcBatchScratchBytes(int count) {
  return count <= 0 ? 0 : sizeof(BatchEntry) * static_cast<size_t>(count);
}

cudaError_t LaunchRvqEncodeGreedyTcBatch(const RvqTcJob* jobs, int count,
                                         InputType type, void* d_scratch,
                                         size_t scratch_bytes,
                                         cudaStream_t stream,
                                         TcEncodeVariant variant) {
  if (count < 0 || (count > 0 && jobs == nullptr) || !ValidVariant(variant)) {
    return cudaErrorInvalidValue;
  }
  std::vector<BatchEntry> entries;
  entries.reserve(static_cast<size_t>(count));
  int64_t blocks = 0;
  int k_steps = 0;
  for (int i = 0; i < count; ++i) {
    const RvqTcJob& j = jobs[i];
    if (j.n < 0 || RvqTcCodebookBytes(j.stages, j.K, j.dim) == 0) {
      return cudaErrorInvalidValue;
    }
    if (j.n == 0) continue;
    if (j.x == nullptr || j.codebooks == nullptr || j.norms == nullptr ||
        j.tc == nullptr || j.codes == nullptr ||
        reinterpret_cast<uintptr_t>(j.tc) % 16 != 0) {
      return cudaErrorInvalidValue;
    }
    // One kernel instance per launch: every job's codebooks must be laid
    // out for the same k-steps.
    if (k_steps != 0 && UsedKSteps(j.dim) != k_steps) {
      return cudaErrorInvalidValue;
    }
    k_steps = UsedKSteps(j.dim);
    entries.push_back({j, blocks});
    blocks += RvqTcJobBlocks(j.n);
  }
  if (entries.empty()) return cudaSuccess;
  if (blocks > INT32_MAX || d_scratch == nullptr ||
      scratch_bytes <
          RvqTcBatchScratchBytes(static_cast<int>(entries.size()))) {
    return cudaErrorInvalidValue;
  }
  if (!TensorCoresAvailable()) return cudaErrorNotSupported;
  // From pageable memory, the copy is staged before the call returns, so
  // `entries` may go when it does.
  cudaError_t err = cudaMemcpyAsync(d_scratch, entries.data(),
                                    sizeof(BatchEntry) * entries.size(),
                                    cudaMemcpyHostToDevice, stream);
  if (err != cudaSuccess) return err;
  const auto* d_entries = static_cast<const BatchEntry*>(d_scratch);
  const int n = static_cast<int>(entries.size());
  return ForKernelInstance(
      k_steps, type, variant,
      [&](auto steps, auto tag, auto kind) -> cudaError_t {
        constexpr int kSteps = decltype(steps)::value;
        using In = typename decltype(tag)::type;
        constexpr int kVariant = decltype(kind)::value;
        const size_t smem = TcSharedBytes(kSteps);
        const cudaError_t e = AllowSharedBytes(
            RvqEncodeTcBatchKernel<kSteps, In, kVariant>, smem);
        if (e != cudaSuccess) return e;
        RvqEncodeTcBatchKernel<kSteps, In, kVariant>
            <<<static_cast<unsigned>(blocks),
               TcVariantShape<kVariant>::kThreads, smem, stream>>>(d_entries,
                                                                   n);
        return cudaGetLastError();
      });
}

}  // namespace vqkv::cuda
