// CUDA kernels of residual vector quantization: host launchers only; the
// kernels live in rvq_cuda.cu (the ggml-cuda convention), so this header can
// be included from plain C++ translation units compiled by the host compiler.
//
// Layouts are those of the CPU kernels (kernels/cpu/rvq_kernels.h), all in
// device memory:
//   codebooks: float  [stages][K][dim]
//   norms:     float  [stages][K], norms[s][k] = ||codebooks[s][k]||^2
//   x:         float  [n][dim]
//   codes:     uint16 [n][stages]
//   out:       float  [n][dim], or binary16 bit patterns (uint16) [n][dim]
//
// Results match the CPU references (cpu::RvqEncodeGreedyRef, RvqDecodeRef,
// RvqDecodeHalfRef): encode picks, per stage, the codeword minimising
// norms[k] - 2 <r, c_k> with ties to the lowest index, computed in float32
// with fused multiply-adds, so it can differ from the CPU reference only
// where two codewords' scores are within float rounding of each other.
// Decode sums stages in increasing order in float32; the fp16 output is
// rounded to nearest even.
//
// Every launcher enqueues work on `stream` and returns without waiting; its
// cudaError_t reports argument errors (cudaErrorInvalidValue, checked before
// touching the device) and launch errors, not errors of the asynchronous
// execution (synchronize the stream for those).
//
// Thread safety: launchers may be called from any host thread; concurrent
// launches must not write overlapping outputs.
#ifndef VQKV_KERNELS_CUDA_RVQ_CUDA_CUH_
#define VQKV_KERNELS_CUDA_RVQ_CUDA_CUH_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace vqkv::cuda {

// Largest head dimension the encode kernel accepts: the residuals of a tile
// of vectors live in shared memory.
inline constexpr int kMaxEncodeDim = 512;

// Greedy RVQ encode of n vectors.
// REQUIRES (else cudaErrorInvalidValue): n >= 0; 1 <= dim <= kMaxEncodeDim;
// stages >= 1; 1 <= K <= 65536; non-null pointers when n > 0.
cudaError_t LaunchRvqEncodeGreedy(const float* d_x, int64_t n, int dim,
                                  const float* d_codebooks,
                                  const float* d_norms, int stages, int K,
                                  uint16_t* d_codes, cudaStream_t stream);

// out[i] = sum over s of codebooks[s][codes[i][s]], as float32.
// A code >= K (impossible for codes unpacked at log2(K) bits) contributes
// nothing rather than reading out of bounds.
// REQUIRES (else cudaErrorInvalidValue): n >= 0; dim >= 1; stages >= 1;
// 1 <= K <= 65536; non-null pointers when n > 0.
cudaError_t LaunchRvqDecode(const uint16_t* d_codes, int64_t n, int stages,
                            const float* d_codebooks, int K, int dim,
                            float* d_out, cudaStream_t stream);

// Same sum, written as binary16 bit patterns (round to nearest even); the
// buffer may be reinterpreted as __half.
cudaError_t LaunchRvqDecodeHalf(const uint16_t* d_codes, int64_t n, int stages,
                                const float* d_codebooks, int K, int dim,
                                uint16_t* d_out, cudaStream_t stream);

// The same fp16 output from fp16 codebooks (binary16 bit patterns, the
// float32 codebooks rounded to nearest even): half the codebook bytes
// each vector gathers, which is what bounds decode (docs/CUDA.md,
// "Results"). Sums in float32 as above: equal to LaunchRvqDecodeHalf on
// the rounded codebooks. Each codeword entry moves by at most 2^-11 of its
// magnitude, far below the codec's own error (held-out relative squared
// errors of 0.002 to 0.33 by layer and tensor, docs/FIDELITY.md).
cudaError_t LaunchRvqDecodeHalfCodebooks(const uint16_t* d_codes, int64_t n,
                                         int stages,
                                         const uint16_t* d_codebooks_f16, int K,
                                         int dim, uint16_t* d_out,
                                         cudaStream_t stream);

// LaunchRvqDecodeHalf with `vectors_in_flight` (1, 2 or 4) vectors per
// lane group of the vectorised kernel (dim a multiple of 4 up to 128), to
// put more independent codebook gathers in flight (docs/CUDA.md, "Decode");
// 1 is LaunchRvqDecodeHalf. The output is LaunchRvqDecodeHalf's, bit for
// bit. For the benchmark that chooses the default; the other launchers use
// 1 until it has run on a GPU. Errors: as LaunchRvqDecodeHalf, and
// cudaErrorInvalidValue for another vectors_in_flight.
cudaError_t LaunchRvqDecodeHalfInFlight(const uint16_t* d_codes, int64_t n,
                                        int stages, const float* d_codebooks,
                                        int K, int dim, int vectors_in_flight,
                                        uint16_t* d_out, cudaStream_t stream);

// Element type of the vectors the tensor-core encoder reads.
enum class InputType { kFloat32, kFloat16, kBFloat16 };

// Largest head dimension the tensor-core encoder accepts (its residual
// fragments live in registers).
inline constexpr int kMaxTcEncodeDim = 128;

// Bytes of the tensor-core copy of a codebook set (bf16, in the operand
// order of the mma instruction, dimensions padded to 32, 64, 96 or 128 and
// codewords to a multiple of 8); 0 for shapes the tensor-core encoder does
// not take (dim > kMaxTcEncodeDim, K > 65536, stages or K < 1).
size_t RvqTcCodebookBytes(int stages, int K, int dim);

// Writes that copy of d_codebooks ([stages][K][dim] float32) into d_tc
// (RvqTcCodebookBytes bytes of device memory, 16-byte aligned as cudaMalloc
// returns it). Once per codebook set.
// Errors: cudaErrorInvalidValue for a shape RvqTcCodebookBytes refuses or
// null pointers.
cudaError_t LaunchRvqPrepareTcCodebooks(const float* d_codebooks, int stages,
                                        int K, int dim, void* d_tc,
                                        cudaStream_t stream);

// How the tensor-core encoder is laid out. All keep two candidates per lane
// and vector and choose among them the same way, under the same bound; they
// differ in the instructions each score costs and in how many vectors share
// each codebook fragment (docs/CUDA.md, "Results": that bookkeeping, not the
// tensor cores, bounds the encode). The GPU run's benchmark chooses the
// default. Every variant takes 128 vectors per thread block.
enum class TcEncodeVariant {
  // 8 warps of 16 vectors; candidates in a sorted (score, code) list:
  // compares and swaps per score.
  kSortedLists,
  // 8 warps of 16 vectors; score and code in one 32-bit key
  // (kernels/cuda/tc_candidate_key.h): a bitwise and three integer min/max
  // per score. Its scores lose their low log2(K) mantissa bits, far below
  // the bf16 error.
  kPackedKeys,
  // 4 warps of 32 vectors (two m16 tiles per warp share each codebook
  // fragment load), packed keys.
  kPackedKeysWide,
};

// What the launchers below and their callers (the client's GPU encoders)
// use unless told otherwise: the one that has run on a GPU.
inline constexpr TcEncodeVariant kDefaultTcEncodeVariant =
    TcEncodeVariant::kSortedLists;

// Every variant, for the tests and benchmarks that run them all.
inline constexpr TcEncodeVariant kAllTcEncodeVariants[] = {
    TcEncodeVariant::kSortedLists, TcEncodeVariant::kPackedKeys,
    TcEncodeVariant::kPackedKeysWide};

// A short name for test traces and benchmark rows.
inline const char* TcEncodeVariantName(TcEncodeVariant variant) {
  switch (variant) {
    case TcEncodeVariant::kSortedLists:
      return "sorted lists";
    case TcEncodeVariant::kPackedKeys:
      return "packed keys";
    case TcEncodeVariant::kPackedKeysWide:
      return "packed keys, 32 rows a warp";
  }
  return "unknown variant";
}

// Greedy RVQ encode on tensor cores (compute capability 8.0 or later): the
// layouts of LaunchRvqEncodeGreedy, but x [n][dim] may be float32, fp16 or
// bf16 (converted to float32 on load), and d_tc must be the set's
// tensor-core copy. Each stage scores every codeword by a bf16 product with
// float32 accumulation, keeps a few best candidates per vector and rescores
// in float32 (like LaunchRvqEncodeGreedy) those the bf16 error leaves in
// doubt. Bound: each stage's pick has a float32 score within
// 0.0316 ||r|| max_k ||c_k|| of the nearest codeword's (r the residual;
// bf16 rounding of r and c moves 2 <r, c> by at most half that). Measured
// on an H200 (rvq_encode_tc_test): identical to the CPU reference on every
// vector of random codebooks (9,107 vectors, at and near the paper's stage
// counts); on codebooks with tight clusters of near-equal codewords
// (k-means on few points) picks within a cluster can differ, within the
// bound.
// Errors: cudaErrorInvalidValue as LaunchRvqEncodeGreedy, for a shape
// RvqTcCodebookBytes refuses, a d_tc not 16-byte aligned or an unknown
// `variant`; cudaErrorNotSupported on an older GPU.
cudaError_t LaunchRvqEncodeGreedyTc(
    const void* d_x, InputType type, int64_t n, int dim,
    const float* d_codebooks, const float* d_norms, const void* d_tc,
    int stages, int K, uint16_t* d_codes, cudaStream_t stream,
    TcEncodeVariant variant = kDefaultTcEncodeVariant);

// One encode of a batch: n vectors x [n][dim] (of the batch's input type)
// under one codebook set, as the arguments of LaunchRvqEncodeGreedyTc; all
// pointers in device memory.
struct RvqTcJob {
  const void* x = nullptr;
  int64_t n = 0;
  int dim = 0, stages = 0, K = 0;
  const float* codebooks = nullptr;
  const float* norms = nullptr;
  const void* tc = nullptr;  // the set's tensor-core copy, 16-byte aligned
  uint16_t* codes = nullptr;
};

// Device scratch a batch of `count` jobs needs (its job table).
size_t RvqTcBatchScratchBytes(int count);
// Grid blocks a job of n vectors takes (128 vectors each).
int64_t RvqTcJobBlocks(int64_t n);

// Every job of `jobs` (host memory) in one launch, so that many small
// encodes (each layer's keys and values of a few blocks) fill the GPU
// together; the results are those of one LaunchRvqEncodeGreedyTc per job.
// The job table is copied to d_scratch (RvqTcBatchScratchBytes(count)
// bytes of device memory) on `stream`; it must stay untouched until the
// launch completes. Jobs with n == 0 are skipped.
// Errors: cudaErrorInvalidValue for a job LaunchRvqEncodeGreedyTc would
// refuse, for jobs whose dims fall in different classes of 1-32, 33-64,
// 65-96 and 97-128 (the tensor-core copy's layout differs between them:
// launch one batch per class), or for too small a scratch;
// cudaErrorNotSupported on a GPU older than compute capability 8.0.
cudaError_t LaunchRvqEncodeGreedyTcBatch(
    const RvqTcJob* jobs, int count, InputType type, void* d_scratch,
    size_t scratch_bytes, cudaStream_t stream,
    TcEncodeVariant variant = kDefaultTcEncodeVariant);

}  // namespace vqkv::cuda

#endif  // VQKV_KERNELS_CUDA_RVQ_CUDA_CUH_
