// Attention over codes on the GPU: the CUDA counterpart of
// kernels/code_attention.h (CodeAttention::Attend), host launchers only; the
// kernels live in code_attention_cuda.cu, so this header can be included from
// plain C++ translation units compiled by the host compiler. Needs only the
// CUDA runtime and the C++ standard library (tests/gpu/ builds it).
//
// Method (docs/CUDA.md, "Attention over codes on the GPU"). A key is the sum
// of one codeword per stage, so scale * q.k = sum over stages s of
// T_s[code_s], T_s[c] = scale * q.codebook_s[c]: per query head one table of
// Nk x K entries, then Nk look-ups per token. Values: the softmax weights are
// summed per (stage, codeword) and the output is those sums times the value
// codebooks, once. Four kernels on `stream`: (1) the tables of every problem
// into the workspace; (2) per split of `tokens_per_split` tokens (one thread
// block each), the logits and the split's maximum; (3) per split, the weights
// exp(logit - M) with M the maximum over all splits, accumulated per (value
// stage, codeword, head) in shared memory (in global memory when the table
// does not fit), then added to the problem's weight table in global memory;
// (4) out = weight table x value codebooks, split over codeword rows.
//
// Scope: like CodeAttention, `group` query heads per kv head (GQA), keys coded
// after RoPE; one launch covers outer x inner problems (e.g. layers x kv
// heads) with the same shape and token count. Not supported: key sketches
// (VqConfig::key_sketch_bits; give a codec without one) and pre-RoPE key
// codes. Split key groups (kernels/key_split.h) and key gains are supported
// by the caller's choice of key codebooks, which are full-width:
//   - split keys: group g's codebooks, of its dims only, are written into
//     [stages][K][head_dim] rows that are zero outside group g's dims, and the
//     groups' stages are concatenated in the codec's code order;
//   - a key refinement (CodebookSet::SetKeyRefinement): its R full-width
//     stages after the groups' (UnpackVqCodes puts a refined vector's R codes
//     after its Nk: VqKeyCodeStages); a refined layer has Nk + R stages, so
//     it goes in a launch of its own;
//   - a key gain (CodebookSet::SetKeyGain): multiply every codeword by the
//     gain and add (1 - gain) * centre to every codeword of stage 0.
// These give CodeAttention's logits (up to float rounding).
//
// Layouts, all in device memory; problem (o, i), o < outer, i < inner, is
// problem p = o * inner + i, and each "ProblemStride" array of problem (o, i)
// starts at base + o * stride.outer + i * stride.inner (elements):
//   q:               float [P][group][head_dim]
//   key codes:       uint16, token t's codes at t * key_stride + s, s < Nk
//                    (e.g. UnpackVqCodes's keys [layer][token][kv_head][Nk]:
//                    key_stride kv_heads * Nk, outer tokens * kv_heads * Nk,
//                    inner Nk)
//   value codes:     uint16, token t's at t * value_stride + s, s < Nv
//   key codebooks:   float [Nk][key_codewords][head_dim] per problem
//                    (stride 0: shared by all problems)
//   value codebooks: float [Nv][value_codewords][head_dim] per problem
//   out_max, out_sum float [P][group]; out float [P][group][head_dim]
// Result: the partial softmax state of kernels/code_attention.h's
// AttentionPartial per problem: with x_t = scale * q.k_t, max = max_t x_t,
// sum = sum_t exp(x_t - max), out = sum_t exp(x_t - max) v_t; zero tokens
// give max = -inf, sum = 0, out = 0. Computed in float32 (tables, logits,
// weights and products), so it matches the CPU reference
// (CodeAttention::AttendRef) up to float rounding; weight and output sums
// use atomic additions, so the last bits may differ between runs. A code >=
// the codebook size contributes nothing (no out-of-bounds read; the CPU
// version rejects it).
//
// Every launcher enqueues work on `stream` and returns without waiting; its
// cudaError_t reports argument errors (cudaErrorInvalidValue, checked before
// touching the device) and launch errors, not errors of the asynchronous
// execution (synchronize the stream for those).
//
// Thread safety: launchers may be called from any host thread; concurrent
// launches must use distinct workspaces and outputs.
#ifndef VQKV_KERNELS_CUDA_CODE_ATTENTION_CUDA_CUH_
#define VQKV_KERNELS_CUDA_CODE_ATTENTION_CUDA_CUH_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace vqkv::cuda {

// Largest `group` (query heads per kv head): per-thread accumulators hold one
// value per head.
inline constexpr int kMaxAttentionGroup = 16;
// Largest head_dim.
inline constexpr int kMaxAttentionHeadDim = 512;
// Largest outer * inner (a grid dimension).
inline constexpr int64_t kMaxAttentionProblems = 65535;
// Tokens per thread block when tokens_per_split is 0.
inline constexpr int kDefaultTokensPerSplit = 1024;

// Offsets of problem (o, i) in an array, in elements.
struct ProblemStride {
  int64_t outer = 0;
  int64_t inner = 0;
};

struct CodeAttentionParams {
  // Shape.
  int head_dim = 0;         // 1..kMaxAttentionHeadDim
  int group = 1;            // 1..kMaxAttentionGroup
  int key_stages = 0;       // Nk >= 1
  int key_codewords = 0;    // 1..65536
  int value_stages = 0;     // Nv >= 1
  int value_codewords = 0;  // 1..65536
  // Problems: outer x inner (>= 0 each; product <= kMaxAttentionProblems).
  int outer = 1;
  int inner = 1;
  int64_t tokens = 0;  // per problem, >= 0
  // Tokens per thread block (>= 1), 0 for kDefaultTokensPerSplit.
  int tokens_per_split = 0;
  float scale = 1.0f;  // logits are scale * q.k

  const float* q = nullptr;  // [P][group][head_dim], contiguous
  const uint16_t* key_codes = nullptr;
  int64_t key_stride = 0;  // >= key_stages
  ProblemStride key_codes_stride;
  const uint16_t* value_codes = nullptr;
  int64_t value_stride = 0;  // >= value_stages
  ProblemStride value_codes_stride;
  const float* key_codebooks = nullptr;
  ProblemStride key_codebooks_stride;  // {0, 0}: one set for all problems
  const float* value_codebooks = nullptr;
  ProblemStride value_codebooks_stride;

  float* out_max = nullptr;  // [P][group]
  float* out_sum = nullptr;  // [P][group]
  float* out = nullptr;      // [P][group][head_dim]
};

// Bytes of device workspace LaunchCodeAttention needs for these parameters
// (shape, problem count, tokens and tokens_per_split; pointers are not read):
// the key tables (P x Nk x K x group floats), the logits (P x tokens x
// group), the split maxima and the value weight tables (P x Nv x K x group).
// 0 when tokens == 0 or there are no problems; SIZE_MAX when the parameters
// are invalid.
size_t CodeAttentionWorkspaceBytes(const CodeAttentionParams& params);

// The partial attention state of every problem (see the top of this file).
// The workspace must hold CodeAttentionWorkspaceBytes(params) bytes, be
// 256-byte aligned (cudaMalloc's are) and not be used by another launch
// until this one has run.
// REQUIRES (else cudaErrorInvalidValue): the shape ranges above;
// tokens_per_split >= 0; non-negative problem strides; key_stride >=
// key_stages and value_stride >= value_stages; non-null outputs when there
// are problems; with tokens > 0 also non-null q, codes, codebooks and
// workspace, and workspace_bytes >= CodeAttentionWorkspaceBytes(params).
cudaError_t LaunchCodeAttention(const CodeAttentionParams& params,
                                void* d_workspace, size_t workspace_bytes,
                                cudaStream_t stream);

// Plain attention over binary16 keys and values (already decoded), with the
// same partial result: the peer of attention over codes in
// bench/cuda_attention_bench.cc, and the attention half of decode-then-attend
// (cuda::LaunchRvqDecodeHalf, then this). Flash-decoding style: one thread
// block per split of tokens_per_split tokens (0: 256) computes its local
// partial, then a merge kernel combines the splits. Float32 accumulation.
struct DenseAttentionParams {
  int head_dim = 0;  // 1..kMaxAttentionHeadDim
  int group = 1;     // 1..kMaxAttentionGroup
  int outer = 1;
  int inner = 1;
  int64_t tokens = 0;
  int tokens_per_split = 0;
  float scale = 1.0f;

  const float* q = nullptr;  // [P][group][head_dim]
  // binary16 bit patterns; token t's key at t * key_stride + d, d < head_dim.
  const uint16_t* keys = nullptr;
  int64_t key_stride = 0;  // >= head_dim
  ProblemStride keys_stride;
  const uint16_t* values = nullptr;
  int64_t value_stride = 0;  // >= head_dim
  ProblemStride values_stride;

  float* out_max = nullptr;  // [P][group]
  float* out_sum = nullptr;  // [P][group]
  float* out = nullptr;      // [P][group][head_dim]
};

// Workspace of LaunchDenseAttentionHalf: P x splits x group x (head_dim + 2)
// floats; 0 without tokens or problems, SIZE_MAX for invalid parameters.
size_t DenseAttentionWorkspaceBytes(const DenseAttentionParams& params);

// REQUIRES (else cudaErrorInvalidValue): as LaunchCodeAttention, with
// key_stride, value_stride >= head_dim, and (2 * group * head_dim +
// tokens_per_split * group) floats of shared memory within the device's
// per-block limit (checked on the device, so only with tokens > 0).
cudaError_t LaunchDenseAttentionHalf(const DenseAttentionParams& params,
                                     void* d_workspace, size_t workspace_bytes,
                                     cudaStream_t stream);

}  // namespace vqkv::cuda

#endif  // VQKV_KERNELS_CUDA_CODE_ATTENTION_CUDA_CUH_
