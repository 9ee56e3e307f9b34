// Attention over codes on the GPU, and the plain fp16 attention peer;
// launchers declared in code_attention_cuda.cuh.
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/code_attention_cuda.cuh"

namespace vqkv::cuda {
namespace {

constexpr int kThreads = 256;  // every kernel here; block reductions need it
constexpr int kWarps = kThreads / 32;
constexpr int kG = kMaxAttentionGroup;
constexpr size_t kAlign = 256;
// Key-table kernel: codeword rows per warp.
constexpr int kTableRowsPerWarp = 4;
// Output kernel: query heads and codeword rows per thread block.
constexpr int kOutHeads = 8;
constexpr int kOutRows = 512;
constexpr int kDenseDefaultSplit = 256;
// Dynamic shared memory above this needs cudaFuncSetAttribute.
constexpr size_t kDefaultSharedBytes = 48 * 1024;
// Headroom left for each kernel's static shared memory.
constexpr size_t kStaticSharedReserve = 1024;

static_assert(kThreads % 32 == 0 && kG <= kThreads, "block reductions");

size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Offset of problem p's array (elements).
__device__ __forceinline__ int64_t ProblemOffset(const ProblemStride& s, int p,
                                                 int inner) {
  return static_cast<int64_t>(p / inner) * s.outer +
         static_cast<int64_t>(p % inner) * s.inner;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  return v;
}

// result[h] = max (kMax) or sum over the block's threads of v[h], h < group.
// Every thread of a kThreads block must call it; `group` is uniform. Ends
// with a barrier, so result is visible to all and red reusable.
template <bool kMax>
__device__ void BlockReduceHeads(const float (&v)[kG], int group,
                                 float (*red)[kG], float* result) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int h = 0; h < kG; ++h) {
    if (h < group) {
      const float x = kMax ? WarpMax(v[h]) : WarpSum(v[h]);
      if (lane == 0) red[warp][h] = x;
    }
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < group) {
    const int h = threadIdx.x;
    float x = red[0][h];
    for (int w = 1; w < kWarps; ++w) {
      x = kMax ? fmaxf(x, red[w][h]) : x + red[w][h];
    }
    result[h] = x;
  }
  __syncthreads();
}

// The empty partial: max -inf, sum 0, out 0 for `heads` heads.
__global__ void __launch_bounds__(kThreads)
    FillEmptyKernel(float* out_max, float* out_sum, float* out, int64_t heads,
                    int dim) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start =
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = start; i < heads; i += stride) {
    out_max[i] = -INFINITY;
    out_sum[i] = 0.0f;
  }
  for (int64_t i = start; i < heads * dim; i += stride) out[i] = 0.0f;
}

cudaError_t LaunchFillEmpty(float* out_max, float* out_sum, float* out,
                            int64_t heads, int dim, cudaStream_t stream) {
  const int64_t total = heads * dim;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  FillEmptyKernel<<<static_cast<unsigned>(blocks < 1024 ? blocks : 1024),
                    kThreads, 0, stream>>>(out_max, out_sum, out, heads, dim);
  return cudaGetLastError();
}

// Lets `kernel` use `bytes` of dynamic shared memory, or says why not.
template <typename Kernel>
cudaError_t AllowSharedBytes(Kernel kernel, size_t bytes) {
  if (bytes <= kDefaultSharedBytes) return cudaSuccess;
  return cudaFuncSetAttribute(kernel,
                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

// *bytes = the largest dynamic shared memory a kernel here may ask for on
// the current device.
cudaError_t MaxDynamicSharedBytes(size_t* bytes) {
  int device = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) {
    e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                               device);
  }
  if (e != cudaSuccess) return e;
  *bytes = static_cast<size_t>(optin) > kStaticSharedReserve
               ? static_cast<size_t>(optin) - kStaticSharedReserve
               : 0;
  return cudaSuccess;
}

// ---------------------------------------------------------------------------
// Attention over codes.
//
// Workspace (each part 256-byte aligned):
//   key tables     float [P][Nk * Kk][group]  scale * q_h . codeword
//   logits         float [P][tokens][group]
//   split maxima   float [P][splits][group]
//   weight tables  float [P][Nv * Kv][group]  sum of exp(logit - M) per
//                                             (value stage, codeword)
struct CodeLayout {
  int64_t problems = 0, splits = 0;
  int tokens_per_split = 0;
  size_t key_tables = 0, logits = 0, split_max = 0, weights = 0, total = 0;
};

bool ValidShape(int head_dim, int group, int outer, int inner, int64_t tokens,
                int tokens_per_split) {
  return head_dim >= 1 && head_dim <= kMaxAttentionHeadDim && group >= 1 &&
         group <= kMaxAttentionGroup && outer >= 0 && inner >= 0 &&
         static_cast<int64_t>(outer) * inner <= kMaxAttentionProblems &&
         tokens >= 0 && tokens_per_split >= 0;
}

bool ValidStride(const ProblemStride& s) {
  return s.outer >= 0 && s.inner >= 0;
}

// False for invalid parameters or a workspace too large to address.
bool PlanCode(const CodeAttentionParams& a, CodeLayout* l) {
  if (!ValidShape(a.head_dim, a.group, a.outer, a.inner, a.tokens,
                  a.tokens_per_split) ||
      a.key_stages < 1 || a.key_codewords < 1 || a.key_codewords > 65536 ||
      a.value_stages < 1 || a.value_codewords < 1 ||
      a.value_codewords > 65536) {
    return false;
  }
  l->problems = static_cast<int64_t>(a.outer) * a.inner;
  l->tokens_per_split =
      a.tokens_per_split > 0 ? a.tokens_per_split : kDefaultTokensPerSplit;
  l->splits = (a.tokens + l->tokens_per_split - 1) / l->tokens_per_split;
  if (l->splits > 0x7fffffff) return false;  // grid x
  // Grid x of the key-table and output kernels.
  constexpr int64_t kMaxRows = int64_t{1} << 35;
  if (static_cast<int64_t>(a.key_stages) * a.key_codewords > kMaxRows ||
      static_cast<int64_t>(a.value_stages) * a.value_codewords > kMaxRows) {
    return false;
  }
  // Sizes in floats, checked in double against overflow (< 2^56 bytes).
  const double p = static_cast<double>(l->problems), g = a.group;
  const double kt = p * a.key_stages * a.key_codewords * g;
  const double lg = p * static_cast<double>(a.tokens) * g;
  const double sm = p * static_cast<double>(l->splits) * g;
  const double wt = p * a.value_stages * a.value_codewords * g;
  if ((kt + lg + sm + wt) * sizeof(float) + 4 * kAlign > 0x1p56) return false;
  if (l->problems == 0 || a.tokens == 0) return true;  // all sizes 0
  l->key_tables = 0;
  l->logits = l->key_tables + AlignUp(static_cast<size_t>(kt) * sizeof(float));
  l->split_max = l->logits + AlignUp(static_cast<size_t>(lg) * sizeof(float));
  l->weights = l->split_max + AlignUp(static_cast<size_t>(sm) * sizeof(float));
  l->total = l->weights + AlignUp(static_cast<size_t>(wt) * sizeof(float));
  return true;
}

// (1) tab[p][row][h] = scale * <q[p][h], key_codebooks(p)[row]>, row over
// Nk * Kk codeword rows. A warp per row: lanes stride the dimensions, then a
// shuffle sum per head. Grid (row blocks, P).
__global__ void __launch_bounds__(kThreads)
    KeyTableKernel(CodeAttentionParams prm, float* __restrict__ tables) {
  extern __shared__ float q_s[];  // [group][head_dim]
  const int p = blockIdx.y;
  const int D = prm.head_dim, g = prm.group;
  const float* q = prm.q + static_cast<int64_t>(p) * g * D;
  for (int i = threadIdx.x; i < g * D; i += blockDim.x) q_s[i] = q[i];
  __syncthreads();
  const int64_t rows = static_cast<int64_t>(prm.key_stages) * prm.key_codewords;
  const float* cb =
      prm.key_codebooks + ProblemOffset(prm.key_codebooks_stride, p, prm.inner);
  float* tab = tables + static_cast<int64_t>(p) * rows * g;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kTableRowsPerWarp;
  for (int r = 0; r < kTableRowsPerWarp; ++r) {
    const int64_t row = first + r;
    if (row >= rows) break;  // uniform across the warp
    const float* c = cb + row * D;
    float acc[kG] = {};
    for (int d = lane; d < D; d += 32) {
      const float x = c[d];
#pragma unroll
      for (int h = 0; h < kG; ++h) {
        if (h < g) acc[h] = fmaf(q_s[h * D + d], x, acc[h]);
      }
    }
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < g) {
        const float s = WarpSum(acc[h]);
        if (lane == h) tab[row * g + h] = prm.scale * s;
      }
    }
  }
}

// (2) Logits of split j's tokens (a thread per token: Nk look-ups of `group`
// consecutive floats each, stages in order) and their maximum per head.
// Grid (splits, P).
__global__ void __launch_bounds__(kThreads)
    ScoreKernel(CodeAttentionParams prm, int tokens_per_split, int64_t splits,
                const float* __restrict__ tables, float* __restrict__ logits,
                float* __restrict__ split_max) {
  __shared__ float red[kWarps][kG];
  __shared__ float result[kG];
  const int p = blockIdx.y;
  const int64_t j = blockIdx.x;
  const int g = prm.group, nk = prm.key_stages;
  const unsigned kk = static_cast<unsigned>(prm.key_codewords);
  const int64_t n = prm.tokens;
  const int64_t t0 = j * tokens_per_split;
  const int64_t t1 = t0 + tokens_per_split < n ? t0 + tokens_per_split : n;
  const uint16_t* codes =
      prm.key_codes + ProblemOffset(prm.key_codes_stride, p, prm.inner);
  const float* tab = tables + static_cast<int64_t>(p) * nk * kk * g;
  float* lg = logits + static_cast<int64_t>(p) * n * g;
  float m[kG];
#pragma unroll
  for (int h = 0; h < kG; ++h) m[h] = -INFINITY;
  for (int64_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) {
    const uint16_t* c = codes + t * prm.key_stride;
    float acc[kG] = {};
    for (int s = 0; s < nk; ++s) {
      const unsigned code = c[s];
      if (code < kk) {
        const float* e = tab + (static_cast<int64_t>(s) * kk + code) * g;
#pragma unroll
        for (int h = 0; h < kG; ++h) {
          if (h < g) acc[h] += __ldg(e + h);
        }
      }
    }
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < g) {
        lg[t * g + h] = acc[h];
        m[h] = fmaxf(m[h], acc[h]);
      }
    }
  }
  BlockReduceHeads<true>(m, g, red, result);
  if (static_cast<int>(threadIdx.x) < g) {
    split_max[(static_cast<int64_t>(p) * splits + j) * g + threadIdx.x] =
        result[threadIdx.x];
  }
}

// (3) M = the maximum over all splits; split j's weights w = exp(logit - M)
// summed per (value stage, codeword, head), in shared memory when
// kSharedWeights (then added to the global table once per nonzero entry),
// else directly in the global table; the weight sum per head into out_sum;
// split 0 writes out_max = M. Grid (splits, P).
template <bool kSharedWeights>
__global__ void __launch_bounds__(kThreads)
    WeightKernel(CodeAttentionParams prm, int tokens_per_split, int64_t splits,
                 const float* __restrict__ logits,
                 const float* __restrict__ split_max,
                 float* __restrict__ weights) {
  extern __shared__ float w_s[];  // [Nv * Kv][group] when kSharedWeights
  __shared__ float red[kWarps][kG];
  __shared__ float max_s[kG], sum_s[kG];
  const int p = blockIdx.y;
  const int64_t j = blockIdx.x;
  const int g = prm.group, nv = prm.value_stages;
  const unsigned kv = static_cast<unsigned>(prm.value_codewords);
  const int64_t n = prm.tokens;
  const int64_t entries = static_cast<int64_t>(nv) * kv * g;

  float m[kG];
#pragma unroll
  for (int h = 0; h < kG; ++h) m[h] = -INFINITY;
  const float* sm = split_max + static_cast<int64_t>(p) * splits * g;
  for (int64_t i = threadIdx.x; i < splits; i += blockDim.x) {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < g) m[h] = fmaxf(m[h], sm[i * g + h]);
    }
  }
  BlockReduceHeads<true>(m, g, red, max_s);
#pragma unroll
  for (int h = 0; h < kG; ++h) m[h] = h < g ? max_s[h] : 0.0f;

  float* wg = weights + static_cast<int64_t>(p) * entries;
  float* wt = wg;
  if constexpr (kSharedWeights) {
    for (int64_t i = threadIdx.x; i < entries; i += blockDim.x) w_s[i] = 0.0f;
    __syncthreads();
    wt = w_s;
  }
  const int64_t t0 = j * tokens_per_split;
  const int64_t t1 = t0 + tokens_per_split < n ? t0 + tokens_per_split : n;
  const uint16_t* codes =
      prm.value_codes + ProblemOffset(prm.value_codes_stride, p, prm.inner);
  const float* lg = logits + static_cast<int64_t>(p) * n * g;
  float sum[kG] = {};
  for (int64_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) {
    float w[kG];
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      w[h] = h < g ? expf(lg[t * g + h] - m[h]) : 0.0f;
      sum[h] += w[h];
    }
    const uint16_t* c = codes + t * prm.value_stride;
    for (int s = 0; s < nv; ++s) {
      const unsigned code = c[s];
      if (code < kv) {
        float* e = wt + (static_cast<int64_t>(s) * kv + code) * g;
#pragma unroll
        for (int h = 0; h < kG; ++h) {
          if (h < g) atomicAdd(e + h, w[h]);
        }
      }
    }
  }
  if constexpr (kSharedWeights) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < entries; i += blockDim.x) {
      const float v = w_s[i];
      if (v != 0.0f) atomicAdd(wg + i, v);
    }
  }
  BlockReduceHeads<false>(sum, g, red, sum_s);
  if (static_cast<int>(threadIdx.x) < g) {
    const int64_t i = static_cast<int64_t>(p) * g + threadIdx.x;
    atomicAdd(prm.out_sum + i, sum_s[threadIdx.x]);
    if (j == 0) prm.out_max[i] = max_s[threadIdx.x];
  }
}

// (4) out[p][h][d] += sum over rows r of weights[p][r][h] * vcb(p)[r][d], for
// kOutRows codeword rows and kOutHeads heads per block (out starts at 0).
// Thread items (y, d): dimension d, rows y, y + ry, ... with ry =
// kThreads / head_dim (at least 1); partial sums meet in shared memory.
// Grid (row blocks, head blocks, P).
__global__ void __launch_bounds__(kThreads)
    OutputKernel(CodeAttentionParams prm, const float* __restrict__ weights) {
  extern __shared__ float acc_s[];  // [kOutHeads][head_dim]
  const int D = prm.head_dim, g = prm.group;
  const int p = blockIdx.z;
  const int h0 = blockIdx.y * kOutHeads;
  const int hb = g - h0 < kOutHeads ? g - h0 : kOutHeads;
  const int64_t rows =
      static_cast<int64_t>(prm.value_stages) * prm.value_codewords;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kOutRows;
  const int64_t r1 = r0 + kOutRows < rows ? r0 + kOutRows : rows;
  for (int i = threadIdx.x; i < kOutHeads * D; i += blockDim.x) {
    acc_s[i] = 0.0f;
  }
  __syncthreads();
  const float* cb = prm.value_codebooks +
                    ProblemOffset(prm.value_codebooks_stride, p, prm.inner);
  const float* w = weights + static_cast<int64_t>(p) * rows * g + h0;
  const int ry = kThreads / D > 1 ? kThreads / D : 1;
  for (int item = threadIdx.x; item < ry * D; item += blockDim.x) {
    const int d = item % D, y = item / D;
    float a[kOutHeads] = {};
    for (int64_t r = r0 + y; r < r1; r += ry) {
      const float c = cb[r * D + d];
      const float* wr = w + r * g;
#pragma unroll
      for (int h = 0; h < kOutHeads; ++h) {
        if (h < hb) a[h] = fmaf(wr[h], c, a[h]);
      }
    }
#pragma unroll
    for (int h = 0; h < kOutHeads; ++h) {
      if (h < hb) atomicAdd(&acc_s[h * D + d], a[h]);
    }
  }
  __syncthreads();
  float* out = prm.out + (static_cast<int64_t>(p) * g + h0) * D;
  for (int i = threadIdx.x; i < hb * D; i += blockDim.x) {
    atomicAdd(out + i, acc_s[i]);
  }
}

// ---------------------------------------------------------------------------
// Plain attention over binary16 keys and values.
//
// Workspace: partials float [P][splits][group][head_dim + 2] (max, sum, out).
struct DenseLayout {
  int64_t problems = 0, splits = 0;
  int tokens_per_split = 0;
  size_t total = 0, shared_bytes = 0;
};

bool PlanDense(const DenseAttentionParams& a, DenseLayout* l) {
  if (!ValidShape(a.head_dim, a.group, a.outer, a.inner, a.tokens,
                  a.tokens_per_split)) {
    return false;
  }
  l->problems = static_cast<int64_t>(a.outer) * a.inner;
  l->tokens_per_split =
      a.tokens_per_split > 0 ? a.tokens_per_split : kDenseDefaultSplit;
  l->splits = (a.tokens + l->tokens_per_split - 1) / l->tokens_per_split;
  if (l->splits > 0x7fffffff) return false;
  const double floats = static_cast<double>(l->problems) *
                        static_cast<double>(l->splits) * a.group *
                        (a.head_dim + 2);
  if (floats * sizeof(float) > 0x1p56) return false;
  // q [group][D], logits [tokens_per_split][group], out [group][D].
  l->shared_bytes =
      sizeof(float) * (2 * static_cast<size_t>(a.group) * a.head_dim +
                       static_cast<size_t>(l->tokens_per_split) * a.group);
  if (l->problems == 0 || a.tokens == 0) return true;
  l->total = AlignUp(static_cast<size_t>(floats) * sizeof(float));
  return true;
}

// Split j's local partial: logits (a warp per token), their maximum, the
// weights exp(logit - max) and their sum, and out = weights x values
// (items as in OutputKernel). Grid (splits, P).
__global__ void __launch_bounds__(kThreads)
    DenseSplitKernel(DenseAttentionParams prm, int tokens_per_split,
                     int64_t splits, float* __restrict__ partials) {
  extern __shared__ float sh[];
  __shared__ float red[kWarps][kG];
  __shared__ float max_s[kG], sum_s[kG];
  const int D = prm.head_dim, g = prm.group;
  float* q_s = sh;                         // [g][D]
  float* lg = q_s + g * D;                 // [tokens_per_split][g]
  float* acc = lg + tokens_per_split * g;  // [g][D]
  const int p = blockIdx.y;
  const int64_t j = blockIdx.x;
  const float* q = prm.q + static_cast<int64_t>(p) * g * D;
  for (int i = threadIdx.x; i < g * D; i += blockDim.x) {
    q_s[i] = q[i];
    acc[i] = 0.0f;
  }
  __syncthreads();
  const int64_t t0 = j * tokens_per_split;
  const int64_t t1 =
      t0 + tokens_per_split < prm.tokens ? t0 + tokens_per_split : prm.tokens;
  const int T = static_cast<int>(t1 - t0);
  const __half* keys = reinterpret_cast<const __half*>(prm.keys) +
                       ProblemOffset(prm.keys_stride, p, prm.inner);
  const __half* values = reinterpret_cast<const __half*>(prm.values) +
                         ProblemOffset(prm.values_stride, p, prm.inner);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int tl = warp; tl < T; tl += kWarps) {
    const __half* k = keys + (t0 + tl) * prm.key_stride;
    float a[kG] = {};
    for (int d = lane; d < D; d += 32) {
      const float x = __half2float(k[d]);
#pragma unroll
      for (int h = 0; h < kG; ++h) {
        if (h < g) a[h] = fmaf(q_s[h * D + d], x, a[h]);
      }
    }
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < g) {
        const float s = WarpSum(a[h]);
        if (lane == 0) lg[tl * g + h] = prm.scale * s;
      }
    }
  }
  __syncthreads();
  float m[kG];
#pragma unroll
  for (int h = 0; h < kG; ++h) m[h] = -INFINITY;
  for (int tl = threadIdx.x; tl < T; tl += blockDim.x) {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < g) m[h] = fmaxf(m[h], lg[tl * g + h]);
    }
  }
  BlockReduceHeads<true>(m, g, red, max_s);
  float sum[kG] = {};
  for (int tl = threadIdx.x; tl < T; tl += blockDim.x) {
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < g) {
        const float w = expf(lg[tl * g + h] - max_s[h]);
        lg[tl * g + h] = w;
        sum[h] += w;
      }
    }
  }
  BlockReduceHeads<false>(sum, g, red, sum_s);  // its barriers publish lg
  const int ry = kThreads / D > 1 ? kThreads / D : 1;
  for (int item = threadIdx.x; item < ry * D; item += blockDim.x) {
    const int d = item % D, y = item / D;
    float a[kG] = {};
    for (int tl = y; tl < T; tl += ry) {
      const float v = __half2float(values[(t0 + tl) * prm.value_stride + d]);
#pragma unroll
      for (int h = 0; h < kG; ++h) {
        if (h < g) a[h] = fmaf(lg[tl * g + h], v, a[h]);
      }
    }
#pragma unroll
    for (int h = 0; h < kG; ++h) {
      if (h < g) atomicAdd(&acc[h * D + d], a[h]);
    }
  }
  __syncthreads();
  float* part = partials + (static_cast<int64_t>(p) * splits + j) * g * (D + 2);
  for (int i = threadIdx.x; i < g * D; i += blockDim.x) {
    part[(i / D) * (D + 2) + 2 + i % D] = acc[i];
  }
  if (static_cast<int>(threadIdx.x) < g) {
    part[threadIdx.x * (D + 2)] = max_s[threadIdx.x];
    part[threadIdx.x * (D + 2) + 1] = sum_s[threadIdx.x];
  }
}

// Merges the splits' partials of head h of problem p. Grid (group, P).
__global__ void __launch_bounds__(kThreads)
    DenseMergeKernel(DenseAttentionParams prm, int64_t splits,
                     const float* __restrict__ partials) {
  const int D = prm.head_dim, g = prm.group;
  const int h = blockIdx.x, p = blockIdx.y;
  const int64_t step = static_cast<int64_t>(g) * (D + 2);
  const float* base =
      partials + static_cast<int64_t>(p) * splits * step + h * (D + 2);
  float mx = -INFINITY;
  for (int64_t j = 0; j < splits; ++j) mx = fmaxf(mx, base[j * step]);
  const int64_t head = static_cast<int64_t>(p) * g + h;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.0f;
    for (int64_t j = 0; j < splits; ++j) {
      a += base[j * step + 2 + d] * expf(base[j * step] - mx);
    }
    prm.out[head * D + d] = a;
  }
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int64_t j = 0; j < splits; ++j) {
      s += base[j * step + 1] * expf(base[j * step] - mx);
    }
    prm.out_max[head] = mx;
    prm.out_sum[head] = s;
  }
}

}  // namespace

size_t CodeAttentionWorkspaceBytes(const CodeAttentionParams& params) {
  CodeLayout l;
  return PlanCode(params, &l) ? l.total : SIZE_MAX;
}

cudaError_t LaunchCodeAttention(const CodeAttentionParams& a, void* d_workspace,
                                size_t workspace_bytes, cudaStream_t stream) {
  CodeLayout l;
  if (!PlanCode(a, &l) || a.key_stride < a.key_stages ||
      a.value_stride < a.value_stages || !ValidStride(a.key_codes_stride) ||
      !ValidStride(a.value_codes_stride) ||
      !ValidStride(a.key_codebooks_stride) ||
      !ValidStride(a.value_codebooks_stride)) {
    return cudaErrorInvalidValue;
  }
  if (l.problems == 0) return cudaSuccess;
  if (a.out_max == nullptr || a.out_sum == nullptr || a.out == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t heads = l.problems * a.group;
  if (a.tokens == 0) {
    return LaunchFillEmpty(a.out_max, a.out_sum, a.out, heads, a.head_dim,
                           stream);
  }
  if (a.q == nullptr || a.key_codes == nullptr || a.value_codes == nullptr ||
      a.key_codebooks == nullptr || a.value_codebooks == nullptr ||
      d_workspace == nullptr || workspace_bytes < l.total) {
    return cudaErrorInvalidValue;
  }
  size_t max_shared = 0;
  cudaError_t e = MaxDynamicSharedBytes(&max_shared);
  if (e != cudaSuccess) return e;
  char* ws = static_cast<char*>(d_workspace);
  float* tables = reinterpret_cast<float*>(ws + l.key_tables);
  float* logits = reinterpret_cast<float*>(ws + l.logits);
  float* split_max = reinterpret_cast<float*>(ws + l.split_max);
  float* weights = reinterpret_cast<float*>(ws + l.weights);
  const int64_t weight_entries =
      static_cast<int64_t>(a.value_stages) * a.value_codewords * a.group;

  e = cudaMemsetAsync(
      weights, 0, static_cast<size_t>(l.problems * weight_entries) * 4, stream);
  if (e == cudaSuccess) {
    e = cudaMemsetAsync(a.out_sum, 0, static_cast<size_t>(heads) * 4, stream);
  }
  if (e == cudaSuccess) {
    e = cudaMemsetAsync(a.out, 0, static_cast<size_t>(heads) * a.head_dim * 4,
                        stream);
  }
  if (e != cudaSuccess) return e;

  const unsigned problems = static_cast<unsigned>(l.problems);
  const int64_t key_rows = static_cast<int64_t>(a.key_stages) * a.key_codewords;
  const int64_t rows_per_block = int64_t{kWarps} * kTableRowsPerWarp;
  const size_t q_bytes = sizeof(float) * a.group * a.head_dim;  // <= 32 KiB
  KeyTableKernel<<<dim3(static_cast<unsigned>((key_rows + rows_per_block - 1) /
                                              rows_per_block),
                        problems),
                   kThreads, q_bytes, stream>>>(a, tables);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;

  const dim3 split_grid(static_cast<unsigned>(l.splits), problems);
  ScoreKernel<<<split_grid, kThreads, 0, stream>>>(
      a, l.tokens_per_split, l.splits, tables, logits, split_max);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;

  const size_t weight_bytes = sizeof(float) * weight_entries;
  if (weight_bytes <= max_shared) {
    if ((e = AllowSharedBytes(WeightKernel<true>, weight_bytes)) !=
        cudaSuccess) {
      return e;
    }
    WeightKernel<true><<<split_grid, kThreads, weight_bytes, stream>>>(
        a, l.tokens_per_split, l.splits, logits, split_max, weights);
  } else {
    WeightKernel<false><<<split_grid, kThreads, 0, stream>>>(
        a, l.tokens_per_split, l.splits, logits, split_max, weights);
  }
  if ((e = cudaGetLastError()) != cudaSuccess) return e;

  const int64_t value_rows =
      static_cast<int64_t>(a.value_stages) * a.value_codewords;
  const dim3 out_grid(
      static_cast<unsigned>((value_rows + kOutRows - 1) / kOutRows),
      static_cast<unsigned>((a.group + kOutHeads - 1) / kOutHeads), problems);
  OutputKernel<<<out_grid, kThreads, sizeof(float) * kOutHeads * a.head_dim,
                 stream>>>(a, weights);  // <= 16 KiB
  return cudaGetLastError();
}

size_t DenseAttentionWorkspaceBytes(const DenseAttentionParams& params) {
  DenseLayout l;
  return PlanDense(params, &l) ? l.total : SIZE_MAX;
}

cudaError_t LaunchDenseAttentionHalf(const DenseAttentionParams& a,
                                     void* d_workspace, size_t workspace_bytes,
                                     cudaStream_t stream) {
  DenseLayout l;
  if (!PlanDense(a, &l) || a.key_stride < a.head_dim ||
      a.value_stride < a.head_dim || !ValidStride(a.keys_stride) ||
      !ValidStride(a.values_stride)) {
    return cudaErrorInvalidValue;
  }
  if (l.problems == 0) return cudaSuccess;
  if (a.out_max == nullptr || a.out_sum == nullptr || a.out == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (a.tokens == 0) {
    return LaunchFillEmpty(a.out_max, a.out_sum, a.out, l.problems * a.group,
                           a.head_dim, stream);
  }
  if (a.q == nullptr || a.keys == nullptr || a.values == nullptr ||
      d_workspace == nullptr || workspace_bytes < l.total) {
    return cudaErrorInvalidValue;
  }
  size_t max_shared = 0;
  cudaError_t e = MaxDynamicSharedBytes(&max_shared);
  if (e != cudaSuccess) return e;
  if (l.shared_bytes > max_shared) return cudaErrorInvalidValue;
  if ((e = AllowSharedBytes(DenseSplitKernel, l.shared_bytes)) != cudaSuccess) {
    return e;
  }
  float* partials = static_cast<float*>(d_workspace);
  const unsigned problems = static_cast<unsigned>(l.problems);
  DenseSplitKernel<<<dim3(static_cast<unsigned>(l.splits), problems), kThreads,
                     l.shared_bytes, stream>>>(a, l.tokens_per_split, l.splits,
                                               partials);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  DenseMergeKernel<<<dim3(static_cast<unsigned>(a.group), problems), kThreads,
                     0, stream>>>(a, l.splits, partials);
  return cudaGetLastError();
}

}  // namespace vqkv::cuda
