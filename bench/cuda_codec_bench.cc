// Throughput of the CUDA RVQ kernels (kernels/cuda/rvq_cuda.cuh) at the
// paper's configuration, on one GPU:
//   D=64:  keys 28 stages x 1024 codewords, values 8 x 512
//   D=128: keys 56 x 1024,                  values 16 x 512
// For each quantizer it times greedy encode (float32 cores; tensor cores
// from float32 and from fp16 input) and float32 / fp16 decode with CUDA
// events (device time, data already on the GPU) and prints vectors/s and
// GB/s of fp16 KV (n * dim * 2 bytes). The peer of decode is a device
// memcpy of the bytes decode must move at least (the codes read and the
// fp16 output written): its row is the memory-bandwidth floor. Codebooks are
// random with a per-stage scale that shrinks like a fitted RVQ's; the
// kernels' cost does not depend on the values. As a sanity check, the first
// vectors' GPU codes (both encoders) are compared with the CPU encoder.
//
// After the quantizers it times a paged load and a paged save of one
// LLaMA-3.1-8B layer (RunPagedLoad, RunPagedSave below): the client's
// device decode and encode against the float path they replace.
//
// --llama3-8b-128k instead encodes a whole 128k-token LLaMA-3.1-8B-shaped
// cache on the tensor cores (32 layers x 8 KV heads = 33.5M key and as many
// value vectors of 128 fp16 values; keys 56 x 1024, values 16 x 512), keys
// and values timed separately and summed (about 13 GB of device memory),
// with every variant of the encoder; then the same cache in the shape
// `vqkv calibrate` writes by default (keys split into two 64-dim groups of
// 20 stages, values 32 x 512).
//
// Usage: cuda_codec_bench [--vectors N] [--reps R] [--check N]
//                         [--llama3-8b-128k]
// Exits 77 (skipped, with the reason on stderr) when there is no usable CUDA
// device, as rvq_cuda_test does, so its smoke test (tests/bench/) and
// scripts/bench.sh skip it on a CPU-only machine.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "bench/cuda_check.h"
#include "kernels/cpu/rvq_kernels.h"
#include "kernels/cuda/cuda_device.h"
#include "kernels/cuda/paged_copy.cuh"
#include "kernels/cuda/paged_decode.cuh"
#include "kernels/cuda/paged_encode.cuh"
#include "kernels/cuda/rvq_cuda.cuh"
#include "kernels/fp16.h"
#include "kernels/vq_encode_element.h"
#include "tests/testing/random_decode_view.h"

namespace {

struct Quantizer {
  const char* name;
  int dim, stages, K;
};

template <typename T>
T* DeviceAlloc(size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) return nullptr;
  return static_cast<T*>(p);
}

// Times `launch` (reps runs after one warm-up) in milliseconds per run.
template <typename F>
bool TimeMs(cudaStream_t stream, int reps, F launch, double* ms) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  CHECK_CUDA(launch());
  CHECK_CUDA(cudaStreamSynchronize(stream));
  CHECK_CUDA(cudaEventRecord(start, stream));
  for (int r = 0; r < reps; ++r) CHECK_CUDA(launch());
  CHECK_CUDA(cudaEventRecord(stop, stream));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float total = 0;
  CHECK_CUDA(cudaEventElapsedTime(&total, start, stop));
  *ms = total / reps;
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  return true;
}

void PrintRow(const char* quantizer, const char* op, int64_t n, int dim,
              double ms) {
  const double vps = n / (ms * 1e-3);
  const double gbps = vps * dim * 2 / 1e9;
  std::printf("%-20s %-14s %10lld %10.3f %14.4g %10.2f\n", quantizer, op,
              static_cast<long long>(n), ms, vps, gbps);
}

// Random codebooks whose scale shrinks by 0.9 per stage, and their norms.
void MakeCodebooks(const Quantizer& q, std::mt19937* rng,
                   std::vector<float>* cb, std::vector<float>* norms) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  cb->resize(static_cast<size_t>(q.stages) * q.K * q.dim);
  norms->resize(static_cast<size_t>(q.stages) * q.K);
  float scale = 1.0f;
  for (int s = 0; s < q.stages; ++s, scale *= 0.9f) {
    for (int k = 0; k < q.K; ++k) {
      float* c = &(*cb)[(static_cast<size_t>(s) * q.K + k) * q.dim];
      float norm = 0;
      for (int d = 0; d < q.dim; ++d) {
        c[d] = scale * normal(*rng);
        norm += c[d] * c[d];
      }
      (*norms)[static_cast<size_t>(s) * q.K + k] = norm;
    }
  }
}

bool Run(const Quantizer& q, int64_t n, int reps, int64_t check,
         cudaStream_t stream) {
  std::mt19937 rng(q.dim * 1000 + q.stages);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * q.dim);
  for (float& v : x) v = normal(rng);
  std::vector<float> cb, norms;
  MakeCodebooks(q, &rng, &cb, &norms);

  float* d_x = DeviceAlloc<float>(x.size());
  float* d_cb = DeviceAlloc<float>(cb.size());
  float* d_norms = DeviceAlloc<float>(norms.size());
  uint16_t* d_codes = DeviceAlloc<uint16_t>(static_cast<size_t>(n) * q.stages);
  float* d_out = DeviceAlloc<float>(x.size());
  uint16_t* d_half = DeviceAlloc<uint16_t>(x.size());
  if (!d_x || !d_cb || !d_norms || !d_codes || !d_out || !d_half) {
    std::fprintf(stderr, "cudaMalloc failed\n");
    return false;
  }
  CHECK_CUDA(cudaMemcpy(d_x, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(
      cudaMemcpy(d_cb, cb.data(), cb.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_norms, norms.data(), norms.size() * 4,
                        cudaMemcpyHostToDevice));

  double ms = 0;
  if (!TimeMs(
          stream, reps,
          [&] {
            return vqkv::cuda::LaunchRvqEncodeGreedy(
                d_x, n, q.dim, d_cb, d_norms, q.stages, q.K, d_codes, stream);
          },
          &ms)) {
    return false;
  }
  PrintRow(q.name, "encode greedy", n, q.dim, ms);

  using vqkv::cuda::InputType;
  void* d_tc = DeviceAlloc<uint8_t>(
      vqkv::cuda::RvqTcCodebookBytes(q.stages, q.K, q.dim));
  uint16_t* d_tc_codes =
      DeviceAlloc<uint16_t>(static_cast<size_t>(n) * q.stages);
  if (!d_tc || !d_tc_codes) {
    std::fprintf(stderr, "cudaMalloc failed\n");
    return false;
  }
  CHECK_CUDA(vqkv::cuda::LaunchRvqPrepareTcCodebooks(d_cb, q.stages, q.K, q.dim,
                                                     d_tc, stream));
  // fp16 copy of the input, made on the host (no kernel in this file).
  std::vector<uint16_t> x_half(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x_half[i] = vqkv::FloatToHalfRef(x[i]);
  }
  CHECK_CUDA(cudaMemcpy(d_half, x_half.data(), x_half.size() * 2,
                        cudaMemcpyHostToDevice));
  // "keys": candidates kept as packed keys instead of sorted lists; "keys
  // wide": also 32 vectors a warp, to choose the default (rvq_cuda.cuh,
  // TcEncodeVariant).
  using vqkv::cuda::TcEncodeVariant;
  for (const auto& [type, variant, label, input] :
       {std::tuple{InputType::kFloat16, TcEncodeVariant::kSortedLists,
                   "encode tc fp16", (const void*)d_half},
        std::tuple{InputType::kFloat16, TcEncodeVariant::kPackedKeys,
                   "encode tc fp16 keys", (const void*)d_half},
        std::tuple{InputType::kFloat16, TcEncodeVariant::kPackedKeysWide,
                   "encode tc fp16 keys wide", (const void*)d_half},
        std::tuple{InputType::kFloat32, TcEncodeVariant::kSortedLists,
                   "encode tc f32", (const void*)d_x}}) {
    if (!TimeMs(
            stream, reps,
            [&] {
              return vqkv::cuda::LaunchRvqEncodeGreedyTc(
                  input, type, n, q.dim, d_cb, d_norms, d_tc, q.stages, q.K,
                  d_tc_codes, stream, variant);
            },
            &ms)) {
      return false;
    }
    PrintRow(q.name, label, n, q.dim, ms);
  }
  if (!TimeMs(
          stream, reps,
          [&] {
            return vqkv::cuda::LaunchRvqDecode(d_codes, n, q.stages, d_cb, q.K,
                                               q.dim, d_out, stream);
          },
          &ms)) {
    return false;
  }
  PrintRow(q.name, "decode f32", n, q.dim, ms);
  if (!TimeMs(
          stream, reps,
          [&] {
            return vqkv::cuda::LaunchRvqDecodeHalf(d_codes, n, q.stages, d_cb,
                                                   q.K, q.dim, d_half, stream);
          },
          &ms)) {
    return false;
  }
  PrintRow(q.name, "decode fp16", n, q.dim, ms);
  // The same with more vectors in flight per lane group (bit-identical
  // output), to choose the default.
  for (int in_flight : {2, 4}) {
    if (!TimeMs(
            stream, reps,
            [&] {
              return vqkv::cuda::LaunchRvqDecodeHalfInFlight(
                  d_codes, n, q.stages, d_cb, q.K, q.dim, in_flight, d_half,
                  stream);
            },
            &ms)) {
      return false;
    }
    PrintRow(q.name, in_flight == 2 ? "decode fp16 x2" : "decode fp16 x4", n,
             q.dim, ms);
  }
  // fp16 output from fp16 codebooks (rounded here, on the host).
  std::vector<uint16_t> cb_half(cb.size());
  for (size_t i = 0; i < cb.size(); ++i) {
    cb_half[i] = vqkv::FloatToHalfRef(cb[i]);
  }
  uint16_t* d_cb_half = DeviceAlloc<uint16_t>(cb_half.size());
  if (d_cb_half == nullptr) {
    std::fprintf(stderr, "cudaMalloc failed\n");
    return false;
  }
  CHECK_CUDA(cudaMemcpy(d_cb_half, cb_half.data(), cb_half.size() * 2,
                        cudaMemcpyHostToDevice));
  if (!TimeMs(
          stream, reps,
          [&] {
            return vqkv::cuda::LaunchRvqDecodeHalfCodebooks(
                d_codes, n, q.stages, d_cb_half, q.K, q.dim, d_half, stream);
          },
          &ms)) {
    return false;
  }
  PrintRow(q.name, "decode fp16 cb", n, q.dim, ms);
  // The floor of decode: one device copy of the codes read plus the fp16
  // output written.
  const size_t floor_bytes =
      static_cast<size_t>(n) * (q.stages + q.dim) * sizeof(uint16_t);
  if (!TimeMs(
          stream, reps,
          [&] {
            return cudaMemcpyAsync(d_out, d_x, floor_bytes,
                                   cudaMemcpyDeviceToDevice, stream);
          },
          &ms)) {
    return false;
  }
  PrintRow(q.name, "memcpy (floor)", n, q.dim, ms);

  // Sanity check against the CPU encoder on the first vectors.
  const int64_t m = check < n ? check : n;
  std::vector<uint16_t> gpu(static_cast<size_t>(m) * q.stages),
      cpu(static_cast<size_t>(m) * q.stages);
  CHECK_CUDA(
      cudaMemcpy(gpu.data(), d_codes, gpu.size() * 2, cudaMemcpyDeviceToHost));
  vqkv::cpu::RvqEncodeGreedy(x.data(), m, q.dim, cb.data(), norms.data(),
                             q.stages, q.K, cpu.data());
  int64_t same = 0;
  for (int64_t i = 0; i < m; ++i) {
    bool eq = true;
    for (int s = 0; s < q.stages; ++s) {
      eq = eq && gpu[i * q.stages + s] == cpu[i * q.stages + s];
    }
    same += eq;
  }
  std::fprintf(stderr, "%s: %lld of %lld checked vectors have the CPU codes\n",
               q.name, static_cast<long long>(same), static_cast<long long>(m));
  // The tensor-core codes (of the float32 input, the last run) likewise.
  CHECK_CUDA(cudaMemcpy(gpu.data(), d_tc_codes, gpu.size() * 2,
                        cudaMemcpyDeviceToHost));
  same = 0;
  for (int64_t i = 0; i < m; ++i) {
    bool eq = true;
    for (int s = 0; s < q.stages; ++s) {
      eq = eq && gpu[i * q.stages + s] == cpu[i * q.stages + s];
    }
    same += eq;
  }
  std::fprintf(stderr,
               "%s: %lld of %lld checked vectors have the CPU codes (tensor "
               "cores)\n",
               q.name, static_cast<long long>(same), static_cast<long long>(m));
  cudaFree(d_tc);
  cudaFree(d_tc_codes);

  cudaFree(d_x);
  cudaFree(d_cb);
  cudaFree(d_cb_half);
  cudaFree(d_norms);
  cudaFree(d_codes);
  cudaFree(d_out);
  cudaFree(d_half);
  return true;
}

// A load of one LLaMA-3.1-8B layer into vLLM-style pages: 256 blocks of 16
// tokens (4,096 tokens, 8 KV heads x 128), keys 56 x 1024 coded before
// RoPE (rotated back on decode, written in rotate-half order) with key
// gains, values 16 x 512, fp16 NHD pages of 16 slots out of order. Rows:
// the client's device decode (LaunchVqDecodeToPages, codes on the device);
// the code bytes' trip from pinned host memory over PCIe; the float path it
// replaces on the GPU (LaunchPagedScatter from float32 rows in pinned,
// mapped host memory); the host's part of the float path, the codeword sums
// alone on one core (cpu::RvqDecode; the rotation comes on top); and the
// device memcpy of the bytes the decode must move (codes in, fp16 out).
constexpr int kBlocks = 256, kBlockTokens = 16, kHeads = 8, kDim = 128;
constexpr int64_t kTokens = int64_t{kBlocks} * kBlockTokens;
constexpr int64_t kRow = int64_t{kHeads} * kDim;

// One LLaMA-3.1-8B layer's codec as the client runs it on a GPU: keys
// 56 x 1024 of pre-RoPE codebooks with gains, values 16 x 512, an engine
// in rotate-half order.
vqkv::testing::RandomDecodeSpec LlamaLayerSpec() {
  vqkv::testing::RandomDecodeSpec spec;
  spec.layers = 1;
  spec.kv_heads = kHeads;
  spec.head_dim = kDim;
  spec.key_stages = 56;
  spec.value_stages = 16;
  spec.key_gains = true;
  spec.rot_dims = kDim;
  spec.engine_pairs = vqkv::kDecodeHalfPairs;
  return spec;
}

// The columns of the paged load and save tables: per layer of kTokens.
void PrintLayerHeader() {
  std::printf("%-44s %10s %14s\n", "op", "ms/layer", "tokens/s");
}
void PrintLayerRow(const char* op, double ms) {
  std::printf("%-44s %10.3f %14.4g\n", op, ms, kTokens / (ms * 1e-3));
}

bool RunPagedLoad(cudaStream_t stream, int reps) {
  vqkv::testing::RandomDecodeView view(LlamaLayerSpec());
  CHECK_CUDA(view.Upload());
  const size_t kb = view.KeyBytes(kBlockTokens),
               vb = view.ValueBytes(kBlockTokens);
  const size_t code_bytes = kBlocks * (kb + vb);
  std::mt19937 rng(17);
  uint8_t* h_codes = nullptr;
  CHECK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&h_codes), code_bytes,
                           cudaHostAllocDefault));
  for (size_t i = 0; i < code_bytes; ++i)
    h_codes[i] = static_cast<uint8_t>(rng());
  uint8_t* d_codes = DeviceAlloc<uint8_t>(code_bytes);
  CHECK_CUDA(cudaMemcpy(d_codes, h_codes, code_bytes, cudaMemcpyHostToDevice));
  // Pages: one more page than needed, blocks placed in reverse order.
  const size_t page_elems = size_t{kBlocks + 1} * kBlockTokens * kRow;
  uint16_t* d_pk = DeviceAlloc<uint16_t>(page_elems);
  uint16_t* d_pv = DeviceAlloc<uint16_t>(page_elems);
  float* h_rows = nullptr;  // float32 rows for the float path
  CHECK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&h_rows),
                           2 * kTokens * kRow * sizeof(float),
                           cudaHostAllocMapped));
  for (int64_t i = 0; i < 2 * kTokens * kRow; ++i) h_rows[i] = 0.01f * (i % 97);
  if (!d_codes || !d_pk || !d_pv) {
    std::fprintf(stderr, "cudaMalloc failed\n");
    return false;
  }
  std::vector<vqkv::cuda::CodedPageRow> coded(kTokens);
  std::vector<vqkv::cuda::PagedRow> plain(kTokens);
  for (int b = 0; b < kBlocks; ++b) {
    const uint8_t* k = d_codes + b * (kb + vb);
    for (int t = 0; t < kBlockTokens; ++t) {
      const int64_t i = int64_t{b} * kBlockTokens + t;
      const int32_t page = kBlocks - b;
      coded[i] = {page, t, {k, k + kb, t, i}};
      plain[i] = {page, t, h_rows + i * kRow, h_rows + (kTokens + i) * kRow};
    }
  }
  vqkv::cuda::CodedPageRow* d_coded =
      DeviceAlloc<vqkv::cuda::CodedPageRow>(coded.size());
  vqkv::cuda::PagedRow* d_plain =
      DeviceAlloc<vqkv::cuda::PagedRow>(plain.size());
  CHECK_CUDA(cudaMemcpy(d_coded, coded.data(), coded.size() * sizeof(coded[0]),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_plain, plain.data(), plain.size() * sizeof(plain[0]),
                        cudaMemcpyHostToDevice));
  vqkv::cuda::PageTensor tk{
      d_pk, vqkv::cuda::kPageF16, {kBlockTokens * kRow, kRow, kDim, 1}};
  vqkv::cuda::PageTensor tv = tk;
  tv.data = d_pv;

  std::printf(
      "\npaged load of one LLaMA-3.1-8B layer: %lld tokens (%d blocks "
      "of %d), keys 56x1024 pre-RoPE with gains, values 16x512, fp16 "
      "pages; %zu code bytes (fp16: %lld)\n",
      static_cast<long long>(kTokens), kBlocks, kBlockTokens, code_bytes,
      static_cast<long long>(2 * kTokens * kRow * 2));
  PrintLayerHeader();
  double ms = 0;
  if (!TimeMs(
          stream, reps,
          [&] {
            return vqkv::cuda::LaunchVqDecodeToPages(view.device(), 0, tk, tv,
                                                     d_coded, kTokens, stream);
          },
          &ms)) {
    return false;
  }
  PrintLayerRow("decode codes into pages (GPU)", ms);
  if (!TimeMs(
          stream, reps,
          [&] {
            return vqkv::cuda::LaunchVqDecodeToPages(
                view.device(), 0, tk, tv, d_coded, kTokens, stream,
                vqkv::cuda::PagedDecodeKernel::kPerElement);
          },
          &ms)) {
    return false;
  }
  PrintLayerRow("  the same, one thread per element", ms);
  if (!TimeMs(
          stream, reps,
          [&] {
            return cudaMemcpyAsync(d_codes, h_codes, code_bytes,
                                   cudaMemcpyHostToDevice, stream);
          },
          &ms)) {
    return false;
  }
  PrintLayerRow("codes host -> device (pinned, PCIe)", ms);
  if (!TimeMs(
          stream, reps,
          [&] {
            return vqkv::cuda::LaunchPagedScatter(tk, tv, d_plain, kTokens,
                                                  kHeads, kDim, stream);
          },
          &ms)) {
    return false;
  }
  PrintLayerRow("float path: scatter from mapped host rows", ms);
  const size_t floor_bytes = code_bytes + size_t{2} * kTokens * kRow * 2;
  uint8_t* d_floor = DeviceAlloc<uint8_t>(2 * floor_bytes);
  if (d_floor == nullptr) return false;
  if (!TimeMs(
          stream, reps,
          [&] {
            return cudaMemcpyAsync(d_floor, d_floor + floor_bytes, floor_bytes,
                                   cudaMemcpyDeviceToDevice, stream);
          },
          &ms)) {
    return false;
  }
  PrintLayerRow("memcpy of codes + fp16 pages (floor)", ms);
  // The host's codeword sums for the same layer, one core, as unpacked
  // codes (the unpacking and the rotation come on top).
  std::vector<uint16_t> kcodes(kTokens * kHeads * 56),
      vcodes(kTokens * kHeads * 16);
  for (auto& c : kcodes) c = static_cast<uint16_t>(rng() % 1024);
  for (auto& c : vcodes) c = static_cast<uint16_t>(rng() % 512);
  std::vector<float> kcb(size_t{56} * 1024 * kDim),
      vcb(size_t{16} * 512 * kDim);
  for (auto& x : kcb) x = 0.01f * static_cast<float>(rng() % 100);
  for (auto& x : vcb) x = 0.01f * static_cast<float>(rng() % 100);
  std::vector<float> out(kTokens * kRow);
  const auto t0 = std::chrono::steady_clock::now();
  vqkv::cpu::RvqDecode(kcodes.data(), kTokens * kHeads, 56, kcb.data(), 1024,
                       kDim, out.data());
  vqkv::cpu::RvqDecode(vcodes.data(), kTokens * kHeads, 16, vcb.data(), 512,
                       kDim, out.data());
  const double cpu_ms = std::chrono::duration<double, std::milli>(
                            std::chrono::steady_clock::now() - t0)
                            .count();
  PrintLayerRow("float path: host codeword sums (1 core)", cpu_ms);
  cudaFree(d_floor);
  cudaFree(d_coded);
  cudaFree(d_plain);
  cudaFree(d_codes);
  cudaFree(d_pk);
  cudaFree(d_pv);
  cudaFreeHost(h_codes);
  cudaFreeHost(h_rows);
  return true;
}

// A save of the same layer from the pages (encode_on_device): the job
// inputs read from the pages, the tensor-core encode of every job (one
// launch per head-dimension class) and the packing into pinned host
// staging, against the PCIe round trip of the float path it replaces (the
// rows gathered into mapped host memory, then copied back for the GPU
// encoder) and the same tensor-core encode alone.
bool RunPagedSave(cudaStream_t stream, int reps) {
  namespace vc = vqkv::cuda;
  vqkv::testing::RandomDecodeView view(LlamaLayerSpec());
  CHECK_CUDA(view.Upload());
  const vqkv::VqDecodeView& w = view.host();
  const int jobs = vqkv::VqEncodeJobCount(w);
  const int64_t job_rows = vqkv::VqEncodeJobRows(w, kTokens);
  // Per quantizer (one key group and the values): norms, tensor-core copy.
  std::vector<vc::RvqTcJob> tc_jobs;
  std::vector<void*> owned;
  for (int j = 0; j < jobs; ++j) {
    const std::vector<float>& cb = view.books()[j];
    const int stages = vqkv::VqEncodeJobStages(w, j);
    const int dim = vqkv::VqEncodeJobDims(w, j);
    const int K =
        1 << (j < vqkv::VqEncodeKeyJobs(w) ? w.key_bits : w.value_bits);
    std::vector<float> norms(static_cast<size_t>(stages) * K);
    for (size_t c = 0; c < norms.size(); ++c) {
      float sum = 0;
      for (int d = 0; d < dim; ++d) sum += cb[c * dim + d] * cb[c * dim + d];
      norms[c] = sum;
    }
    float* d_norms = DeviceAlloc<float>(norms.size());
    void* d_tc = DeviceAlloc<uint8_t>(vc::RvqTcCodebookBytes(stages, K, dim));
    float* d_in = DeviceAlloc<float>(job_rows * dim);
    uint16_t* d_out = DeviceAlloc<uint16_t>(job_rows * stages);
    if (!d_norms || !d_tc || !d_in || !d_out) return false;
    owned.insert(owned.end(), {d_norms, d_tc, d_in, d_out});
    CHECK_CUDA(cudaMemcpy(d_norms, norms.data(), norms.size() * 4,
                          cudaMemcpyHostToDevice));
    CHECK_CUDA(vc::LaunchRvqPrepareTcCodebooks(view.device_books()[j], stages,
                                               K, dim, d_tc, stream));
    tc_jobs.push_back({d_in, job_rows, dim, stages, K, view.device_books()[j],
                       d_norms, d_tc, d_out});
  }
  std::vector<float*> inputs;
  std::vector<const uint16_t*> codes;
  for (const vc::RvqTcJob& j : tc_jobs) {
    inputs.push_back(static_cast<float*>(const_cast<void*>(j.x)));
    codes.push_back(j.codes);
  }
  float** d_inputs = DeviceAlloc<float*>(inputs.size());
  const uint16_t** d_codes = DeviceAlloc<const uint16_t*>(codes.size());
  const size_t batch_bytes = vc::RvqTcBatchScratchBytes(jobs);
  void* d_batch = DeviceAlloc<uint8_t>(batch_bytes);
  uint16_t* d_pk =
      DeviceAlloc<uint16_t>(size_t{kBlocks + 1} * kBlockTokens * kRow);
  uint16_t* d_pv =
      DeviceAlloc<uint16_t>(size_t{kBlocks + 1} * kBlockTokens * kRow);
  if (!d_inputs || !d_codes || !d_batch || !d_pk || !d_pv) return false;
  CHECK_CUDA(cudaMemcpy(d_inputs, inputs.data(), inputs.size() * sizeof(void*),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_codes, codes.data(), codes.size() * sizeof(void*),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(
      cudaMemset(d_pk, 0x3c, size_t{kBlocks + 1} * kBlockTokens * kRow * 2));
  CHECK_CUDA(
      cudaMemset(d_pv, 0x3c, size_t{kBlocks + 1} * kBlockTokens * kRow * 2));
  vc::PageTensor tk{d_pk, vc::kPageF16, {kBlockTokens * kRow, kRow, kDim, 1}};
  vc::PageTensor tv = tk;
  tv.data = d_pv;
  // Token rows, pack blocks (slices into pinned, mapped host memory), and
  // the float path's rows (mapped host memory).
  const size_t kb = view.KeyBytes(kBlockTokens),
               vb = view.ValueBytes(kBlockTokens);
  uint8_t* h_slices = nullptr;
  float* h_rows = nullptr;
  CHECK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&h_slices),
                           kBlocks * (kb + vb), cudaHostAllocMapped));
  CHECK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&h_rows),
                           2 * kTokens * kRow * sizeof(float),
                           cudaHostAllocMapped));
  std::vector<vc::EncodeTokenRow> rows(kTokens);
  std::vector<vc::PackBlock> blocks(kBlocks);
  std::vector<vc::PagedRow> plain(kTokens);
  for (int b = 0; b < kBlocks; ++b) {
    blocks[b] = {int64_t{b} * kBlockTokens, kBlockTokens,
                 h_slices + b * (kb + vb), h_slices + b * (kb + vb) + kb};
    for (int t = 0; t < kBlockTokens; ++t) {
      const int64_t i = int64_t{b} * kBlockTokens + t;
      rows[i] = {kBlocks - b, t, i};
      plain[i] = {kBlocks - b, t, h_rows + i * kRow,
                  h_rows + (kTokens + i) * kRow};
    }
  }
  auto* d_rows = DeviceAlloc<vc::EncodeTokenRow>(rows.size());
  auto* d_blocks = DeviceAlloc<vc::PackBlock>(blocks.size());
  auto* d_plain = DeviceAlloc<vc::PagedRow>(plain.size());
  float* d_float_rows = DeviceAlloc<float>(2 * kTokens * kRow);
  if (!d_rows || !d_blocks || !d_plain || !d_float_rows) return false;
  CHECK_CUDA(cudaMemcpy(d_rows, rows.data(), rows.size() * sizeof(rows[0]),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_blocks, blocks.data(),
                        blocks.size() * sizeof(blocks[0]),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_plain, plain.data(), plain.size() * sizeof(plain[0]),
                        cudaMemcpyHostToDevice));
  const int64_t pack_bytes = kBlocks * static_cast<int64_t>(kb + vb);
  auto encode_all = [&](vc::TcEncodeVariant variant =
                            vc::TcEncodeVariant::kSortedLists) -> cudaError_t {
    for (int dim_class = 0; dim_class < 4; ++dim_class) {
      std::vector<vc::RvqTcJob> batch;
      for (const vc::RvqTcJob& j : tc_jobs) {
        if ((j.dim - 1) / 32 == dim_class) batch.push_back(j);
      }
      if (batch.empty()) continue;
      const cudaError_t e = vc::LaunchRvqEncodeGreedyTcBatch(
          batch.data(), static_cast<int>(batch.size()), vc::InputType::kFloat32,
          d_batch, batch_bytes, stream, variant);
      if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
  };

  std::printf(
      "\npaged save of one LLaMA-3.1-8B layer: %lld tokens (%d blocks "
      "of %d), the codec above, fp16 pages\n",
      static_cast<long long>(kTokens), kBlocks, kBlockTokens);
  PrintLayerHeader();
  double ms = 0;
  if (!TimeMs(
          stream, reps,
          [&] {
            cudaError_t e = vc::LaunchVqEncodeInputs(
                view.device(), tk, tv, d_rows, kTokens, d_inputs, stream);
            if (e == cudaSuccess) e = encode_all();
            if (e == cudaSuccess) {
              e = vc::LaunchVqPackLayer(view.device(), d_codes, d_blocks,
                                        kBlocks, pack_bytes, stream);
            }
            return e;
          },
          &ms)) {
    return false;
  }
  PrintLayerRow("encode from pages (inputs + encode + pack)", ms);
  if (!TimeMs(
          stream, reps,
          [&] {
            return vc::LaunchVqEncodeInputs(view.device(), tk, tv, d_rows,
                                            kTokens, d_inputs, stream);
          },
          &ms)) {
    return false;
  }
  PrintLayerRow("  of which: inputs from the pages", ms);
  if (!TimeMs(
          stream, reps, [&] { return encode_all(); }, &ms))
    return false;
  PrintLayerRow("  of which: tensor-core encode", ms);
  for (const vc::TcEncodeVariant variant :
       {vc::TcEncodeVariant::kPackedKeys,
        vc::TcEncodeVariant::kPackedKeysWide}) {
    if (!TimeMs(
            stream, reps, [&] { return encode_all(variant); }, &ms)) {
      return false;
    }
    PrintLayerRow(
        (std::string("  the same, ") + vc::TcEncodeVariantName(variant))
            .c_str(),
        ms);
  }
  if (!TimeMs(
          stream, reps,
          [&] {
            return vc::LaunchPagedGather(tk, tv, d_plain, kTokens, kHeads, kDim,
                                         stream);
          },
          &ms)) {
    return false;
  }
  PrintLayerRow("float path: gather into mapped host rows", ms);
  if (!TimeMs(
          stream, reps,
          [&] {
            return cudaMemcpyAsync(d_float_rows, h_rows,
                                   2 * kTokens * kRow * sizeof(float),
                                   cudaMemcpyHostToDevice, stream);
          },
          &ms)) {
    return false;
  }
  PrintLayerRow("float path: rows back to the GPU encoder", ms);
  for (void* p : owned) cudaFree(p);
  for (void* p :
       {static_cast<void*>(d_inputs), static_cast<void*>(d_codes), d_batch,
        static_cast<void*>(d_pk), static_cast<void*>(d_pv),
        static_cast<void*>(d_rows), static_cast<void*>(d_blocks),
        static_cast<void*>(d_plain), static_cast<void*>(d_float_rows)}) {
    cudaFree(p);
  }
  cudaFreeHost(h_slices);
  cudaFreeHost(h_rows);
  return true;
}

// The whole 128k-token cache of a LLaMA-3.1-8B-shaped model (32 layers x 8
// KV heads x head_dim 128), fp16, encoded on the tensor cores: keys at
// 56 x 1024, then values at 16 x 512, one launch each. The input repeats a
// 65536-vector random block (the cost does not depend on the values).
bool RunLlama128k(cudaStream_t stream) {
  namespace vc = vqkv::cuda;
  constexpr int64_t kTokens = 131072, kLayers = 32, kHeads = 8, kDim = 128;
  constexpr int64_t n = kTokens * kLayers * kHeads;
  constexpr int64_t kBase = 65536;
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> base(static_cast<size_t>(kBase) * kDim);
  for (uint16_t& h : base) h = vqkv::FloatToHalfRef(normal(rng));
  uint16_t* d_x = DeviceAlloc<uint16_t>(static_cast<size_t>(n) * kDim);
  uint16_t* d_codes = DeviceAlloc<uint16_t>(static_cast<size_t>(n) * 56);
  if (!d_x || !d_codes) {
    std::fprintf(stderr, "cudaMalloc failed (needs about 13 GB)\n");
    return false;
  }
  CHECK_CUDA(
      cudaMemcpy(d_x, base.data(), base.size() * 2, cudaMemcpyHostToDevice));
  for (int64_t filled = kBase; filled < n;) {
    const int64_t count = filled < n - filled ? filled : n - filled;
    CHECK_CUDA(cudaMemcpy(d_x + filled * kDim, d_x,
                          static_cast<size_t>(count) * kDim * 2,
                          cudaMemcpyDeviceToDevice));
    filled += count;
  }
  std::printf(
      "LLaMA-3.1-8B shape, 128k tokens: %lld key and %lld value "
      "vectors of 128 fp16, tensor-core encode\n",
      static_cast<long long>(n), static_cast<long long>(n));
  // A part of a shape: its quantizer, and how many of its vectors each
  // 128-dim key or value head vector makes (2 for a key split into two
  // 64-dim groups, each coded on its own; the cost does not depend on which
  // dimensions go to which group, so the halves are read as they lie).
  struct Part {
    Quantizer q;
    int64_t per_head_vector;
  };
  struct Shape {
    const char* title;
    std::vector<Part> parts;
  };
  const Shape shapes[] = {
      {"the paper's rate (the target's shape)",
       {{{"keys 56x1024", 128, 56, 1024}, 1},
        {{"values 16x512", 128, 16, 512}, 1}}},
      {"the shape `vqkv calibrate` writes by default for head_dim 128 (key "
       "split, 40 key and 32 value stages, 2.6875 bits/element)",
       {{{"keys 2x(20x1024)/64", 64, 20, 1024}, 2},
        {{"values 32x512", 128, 32, 512}, 1}}}};
  for (const Shape& shape : shapes) {
    std::printf("\n%s\n%-20s %-28s %10s %14s\n", shape.title, "part", "variant",
                "seconds", "vectors/s");
    constexpr int kVariants = std::size(vc::kAllTcEncodeVariants);
    double total_s[kVariants] = {};
    for (const Part& part : shape.parts) {
      const Quantizer& q = part.q;
      const int64_t count = n * part.per_head_vector;
      std::vector<float> cb, norms;
      MakeCodebooks(q, &rng, &cb, &norms);
      float* d_cb = DeviceAlloc<float>(cb.size());
      float* d_norms = DeviceAlloc<float>(norms.size());
      void* d_tc = DeviceAlloc<uint8_t>(
          vqkv::cuda::RvqTcCodebookBytes(q.stages, q.K, q.dim));
      if (!d_cb || !d_norms || !d_tc) return false;
      CHECK_CUDA(
          cudaMemcpy(d_cb, cb.data(), cb.size() * 4, cudaMemcpyHostToDevice));
      CHECK_CUDA(cudaMemcpy(d_norms, norms.data(), norms.size() * 4,
                            cudaMemcpyHostToDevice));
      CHECK_CUDA(vqkv::cuda::LaunchRvqPrepareTcCodebooks(d_cb, q.stages, q.K,
                                                         q.dim, d_tc, stream));
      for (int w = 0; w < kVariants; ++w) {
        // Warm-up on the first 1M vectors, then one timed run over all.
        CHECK_CUDA(vqkv::cuda::LaunchRvqEncodeGreedyTc(
            d_x, vqkv::cuda::InputType::kFloat16, int64_t{1} << 20, q.dim, d_cb,
            d_norms, d_tc, q.stages, q.K, d_codes, stream,
            vc::kAllTcEncodeVariants[w]));
        double ms = 0;
        if (!TimeMs(
                stream, 1,
                [&] {
                  return vqkv::cuda::LaunchRvqEncodeGreedyTc(
                      d_x, vqkv::cuda::InputType::kFloat16, count, q.dim, d_cb,
                      d_norms, d_tc, q.stages, q.K, d_codes, stream,
                      vc::kAllTcEncodeVariants[w]);
                },
                &ms)) {
          return false;
        }
        std::printf("%-20s %-28s %10.3f %14.4g\n", q.name,
                    vc::TcEncodeVariantName(vc::kAllTcEncodeVariants[w]),
                    ms / 1e3, count / (ms * 1e-3));
        total_s[w] += ms / 1e3;
      }
      cudaFree(d_cb);
      cudaFree(d_norms);
      cudaFree(d_tc);
    }
    for (int w = 0; w < kVariants; ++w) {
      std::printf("%-20s %-28s %10.3f\n", "total",
                  vc::TcEncodeVariantName(vc::kAllTcEncodeVariants[w]),
                  total_s[w]);
    }
  }
  cudaFree(d_x);
  cudaFree(d_codes);
  return true;
}

}  // namespace

// Parses "--name VALUE" or "--name=VALUE" into a positive (or, with
// allow_zero, non-negative) integer. No CLI library: this program also builds
// in the CUDA-only GPU check (tests/gpu/), which has only the toolkit.
bool ParseFlag(int argc, char** argv, int* i, const char* name, int64_t* out,
               bool allow_zero) {
  const std::string arg = argv[*i], flag = std::string("--") + name;
  std::string value;
  if (arg == flag && *i + 1 < argc) {
    value = argv[++*i];
  } else if (arg.rfind(flag + "=", 0) == 0) {
    value = arg.substr(flag.size() + 1);
  } else {
    return false;
  }
  char* end = nullptr;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || v < (allow_zero ? 0 : 1)) {
    std::fprintf(stderr,
                 "cuda_codec_bench: --%s needs a %s integer, not '%s'\n", name,
                 allow_zero ? "non-negative" : "positive", value.c_str());
    std::exit(2);
  }
  *out = v;
  return true;
}

int main(int argc, char** argv) {
  int64_t n = 65536, reps = 5, check = 256;
  bool llama = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--llama3-8b-128k") {
      llama = true;
      continue;
    }
    if (ParseFlag(argc, argv, &i, "vectors", &n, false) ||
        ParseFlag(argc, argv, &i, "reps", &reps, false) ||
        ParseFlag(argc, argv, &i, "check", &check, true)) {
      continue;
    }
    std::fprintf(stderr,
                 "usage: cuda_codec_bench [--vectors N] [--reps R] "
                 "[--check N] [--llama3-8b-128k]\n");
    return std::string(argv[i]) == "--help" ? 0 : 2;
  }

  std::string why_not;
  if (vqkv::cuda::CudaDeviceCount(&why_not) == 0) {
    std::fprintf(stderr, "cuda_codec_bench: skipped: %s\n", why_not.c_str());
    return 77;
  }
  std::printf("device: %s\n", vqkv::cuda::CudaDeviceDescription(0).c_str());
  if (llama) {
    cudaStream_t stream;
    if (cudaStreamCreate(&stream) != cudaSuccess) return 1;
    const bool ok = RunLlama128k(stream);
    cudaStreamDestroy(stream);
    return ok ? 0 : 1;
  }
  std::printf(
      "vectors per run: %lld, timed runs: %d (CUDA events, device "
      "time, data resident on the GPU)\n",
      static_cast<long long>(n), static_cast<int>(reps));
  std::printf("%-20s %-14s %10s %10s %14s %10s\n", "quantizer", "op", "vectors",
              "ms/run", "vectors/s", "GB/s fp16");

  const Quantizer quantizers[] = {
      {"D=64 keys 28x1024", 64, 28, 1024},
      {"D=64 values 8x512", 64, 8, 512},
      {"D=128 keys 56x1024", 128, 56, 1024},
      {"D=128 values 16x512", 128, 16, 512},
  };
  cudaStream_t stream;
  if (cudaStreamCreate(&stream) != cudaSuccess) {
    std::fprintf(stderr, "cudaStreamCreate failed\n");
    return 1;
  }
  for (const Quantizer& q : quantizers) {
    if (!Run(q, n, static_cast<int>(reps), check, stream)) return 1;
  }
  if (!RunPagedLoad(stream, static_cast<int>(reps))) return 1;
  if (!RunPagedSave(stream, static_cast<int>(reps))) return 1;
  cudaStreamDestroy(stream);
  return 0;
}
