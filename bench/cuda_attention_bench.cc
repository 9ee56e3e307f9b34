// Decode-step attention over a long context on one GPU: attention over codes
// (kernels/cuda/code_attention_cuda.cuh, LaunchCodeAttention) against
// decode-then-attend (cuda::LaunchRvqDecodeHalf for keys and values, then
// LaunchDenseAttentionHalf) and, as the peer, plain fp16 attention over keys
// and values already decoded (LaunchDenseAttentionHalf alone), at the
// paper's configuration:
//   D=128: keys 56 stages x 1024 codewords, values 16 x 512 (default)
//   D=64:  keys 28 x 1024,                  values 8 x 512
// One layer: --kv-heads kv heads (problems of one launch) with --group query
// heads each, one query token; codebooks shared by the heads. Codes and
// codebooks are random (the kernels' cost does not depend on the values).
// Times are device times from CUDA events around each call, the median over
// --reps calls after --warmup untimed ones; data is resident on the GPU. The
// last column is a sanity check: the largest |difference| of the normalized
// outputs (out / sum) of codes and decode-then-attend (fp16 rounding only).
//
// Usage: cuda_attention_bench [--quick] [--lengths 1024,4096,...] [--dim
// 64|128]
//          [--kv-heads H] [--group G] [--reps R] [--warmup W] [--split T]
// --quick: lengths 1024, 8192 and 65536 with 5 repeats.
// Exits 77 (skipped, with the reason on stderr) without a usable CUDA
// device, like cuda_codec_bench, so its smoke test (tests/bench/) skips on a
// CPU-only machine.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_check.h"
#include "kernels/cuda/code_attention_cuda.cuh"
#include "kernels/cuda/cuda_device.h"
#include "kernels/cuda/rvq_cuda.cuh"

namespace {

struct Config {
  int dim = 128, kv_heads = 8, group = 4, reps = 20, warmup = 3, split = 0;
  std::vector<int64_t> lengths = {1024, 2048, 4096, 8192, 16384, 32768, 65536};
};

// Owns a device allocation.
template <typename T>
class Device {
 public:
  explicit Device(size_t n) {
    if (cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) {
      p_ = nullptr;
    }
  }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device() {
    if (p_ != nullptr) cudaFree(p_);
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

// Median milliseconds per call of `launch` over `reps` calls, each between
// two events, after `warmup` untimed calls.
template <typename F>
bool MedianMs(cudaStream_t stream, int warmup, int reps, F launch, double* ms) {
  for (int i = 0; i < warmup; ++i) CHECK_CUDA(launch());
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(reps));
  for (cudaEvent_t& e : ev) CHECK_CUDA(cudaEventCreate(&e));
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(ev[2 * r], stream));
    CHECK_CUDA(launch());
    CHECK_CUDA(cudaEventRecord(ev[2 * r + 1], stream));
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> t(reps);
  for (int r = 0; r < reps; ++r) {
    float x = 0;
    CHECK_CUDA(cudaEventElapsedTime(&x, ev[2 * r], ev[2 * r + 1]));
    t[r] = x;
  }
  for (cudaEvent_t e : ev) CHECK_CUDA(cudaEventDestroy(e));
  std::sort(t.begin(), t.end());
  *ms = reps % 2 == 1 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
  return true;
}

bool Run(const Config& c, int64_t n, cudaStream_t stream) {
  const int D = c.dim, H = c.kv_heads, G = c.group;
  const int nk = D == 64 ? 28 : 56, nv = D == 64 ? 8 : 16;
  const int kk = 1024, kv = 512;
  std::mt19937 rng(static_cast<uint32_t>(n * 31 + D));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto books = [&](int stages, int K) {
    std::vector<float> cb(static_cast<size_t>(stages) * K * D);
    float scale = 1.0f;
    for (int s = 0; s < stages; ++s, scale *= 0.8f) {
      for (size_t i = 0; i < static_cast<size_t>(K) * D; ++i) {
        cb[static_cast<size_t>(s) * K * D + i] = scale * normal(rng);
      }
    }
    return cb;
  };
  const std::vector<float> kcb = books(nk, kk), vcb = books(nv, kv);
  std::vector<float> q(static_cast<size_t>(H) * G * D);
  for (float& x : q) x = 2.0f * normal(rng);
  // Codes [token][kv head][stages], as UnpackVqCodes lays out one layer.
  std::vector<uint16_t> kc(static_cast<size_t>(n) * H * nk),
      vc(static_cast<size_t>(n) * H * nv);
  for (uint16_t& x : kc) x = static_cast<uint16_t>(rng() % kk);
  for (uint16_t& x : vc) x = static_cast<uint16_t>(rng() % kv);

  Device<float> d_kcb(kcb.size()), d_vcb(vcb.size()), d_q(q.size());
  Device<uint16_t> d_kc(kc.size()), d_vc(vc.size());
  const size_t kv_elems = static_cast<size_t>(n) * H * D;
  Device<uint16_t> d_keys(kv_elems), d_values(kv_elems);
  const size_t heads = static_cast<size_t>(H) * G;
  Device<float> c_max(heads), c_sum(heads), c_out(heads * D);
  Device<float> d_max(heads), d_sum(heads), d_out(heads * D);
  if (!d_kcb.get() || !d_vcb.get() || !d_q.get() || !d_kc.get() ||
      !d_vc.get() || !d_keys.get() || !d_values.get() || !c_max.get() ||
      !c_sum.get() || !c_out.get() || !d_max.get() || !d_sum.get() ||
      !d_out.get()) {
    std::fprintf(stderr, "cudaMalloc failed at %lld tokens\n",
                 static_cast<long long>(n));
    return false;
  }
  CHECK_CUDA(cudaMemcpy(d_kcb.get(), kcb.data(), kcb.size() * 4,
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_vcb.get(), vcb.data(), vcb.size() * 4,
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(
      cudaMemcpy(d_q.get(), q.data(), q.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(
      cudaMemcpy(d_kc.get(), kc.data(), kc.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(
      cudaMemcpy(d_vc.get(), vc.data(), vc.size() * 2, cudaMemcpyHostToDevice));
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  vqkv::cuda::CodeAttentionParams a;
  a.head_dim = D;
  a.group = G;
  a.key_stages = nk;
  a.key_codewords = kk;
  a.value_stages = nv;
  a.value_codewords = kv;
  a.outer = 1;
  a.inner = H;
  a.tokens = n;
  a.tokens_per_split = c.split;
  a.scale = scale;
  a.q = d_q.get();
  a.key_codes = d_kc.get();
  a.key_stride = static_cast<int64_t>(H) * nk;
  a.key_codes_stride = {0, nk};
  a.value_codes = d_vc.get();
  a.value_stride = static_cast<int64_t>(H) * nv;
  a.value_codes_stride = {0, nv};
  a.key_codebooks = d_kcb.get();
  a.value_codebooks = d_vcb.get();
  a.out_max = c_max.get();
  a.out_sum = c_sum.get();
  a.out = c_out.get();
  const size_t code_ws = vqkv::cuda::CodeAttentionWorkspaceBytes(a);

  vqkv::cuda::DenseAttentionParams b;
  b.head_dim = D;
  b.group = G;
  b.outer = 1;
  b.inner = H;
  b.tokens = n;
  b.scale = scale;
  b.q = d_q.get();
  b.keys = d_keys.get();
  b.key_stride = static_cast<int64_t>(H) * D;
  b.keys_stride = {0, D};
  b.values = d_values.get();
  b.value_stride = static_cast<int64_t>(H) * D;
  b.values_stride = {0, D};
  b.out_max = d_max.get();
  b.out_sum = d_sum.get();
  b.out = d_out.get();
  const size_t dense_ws = vqkv::cuda::DenseAttentionWorkspaceBytes(b);
  if (code_ws == SIZE_MAX || dense_ws == SIZE_MAX) {
    std::fprintf(stderr, "invalid attention parameters\n");
    return false;
  }
  Device<char> ws_code(code_ws), ws_dense(dense_ws);
  if (!ws_code.get() || !ws_dense.get()) {
    std::fprintf(stderr, "cudaMalloc of the workspaces failed\n");
    return false;
  }

  auto codes = [&] {
    return vqkv::cuda::LaunchCodeAttention(a, ws_code.get(), code_ws, stream);
  };
  auto dense = [&] {
    return vqkv::cuda::LaunchDenseAttentionHalf(b, ws_dense.get(), dense_ws,
                                                stream);
  };
  auto decode_dense = [&] {
    cudaError_t e = vqkv::cuda::LaunchRvqDecodeHalf(
        d_kc.get(), n * H, nk, d_kcb.get(), kk, D, d_keys.get(), stream);
    if (e == cudaSuccess) {
      e = vqkv::cuda::LaunchRvqDecodeHalf(d_vc.get(), n * H, nv, d_vcb.get(),
                                          kv, D, d_values.get(), stream);
    }
    return e == cudaSuccess ? dense() : e;
  };
  double ms_codes = 0, ms_decode = 0, ms_dense = 0;
  if (!MedianMs(stream, c.warmup, c.reps, codes, &ms_codes) ||
      !MedianMs(stream, c.warmup, c.reps, decode_dense, &ms_decode) ||
      !MedianMs(stream, c.warmup, c.reps, dense, &ms_dense)) {
    return false;
  }
  // Both results of the last calls: codes in c_*, decode-then-attend in d_*.
  CHECK_CUDA(codes());
  CHECK_CUDA(decode_dense());
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<float> cs(heads), co(heads * D), ds(heads), dout(heads * D);
  CHECK_CUDA(
      cudaMemcpy(cs.data(), c_sum.get(), heads * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(co.data(), c_out.get(), co.size() * 4,
                        cudaMemcpyDeviceToHost));
  CHECK_CUDA(
      cudaMemcpy(ds.data(), d_sum.get(), heads * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(dout.data(), d_out.get(), dout.size() * 4,
                        cudaMemcpyDeviceToHost));
  double diff = 0;
  for (size_t h = 0; h < heads; ++h) {
    for (int d = 0; d < D; ++d) {
      diff = std::max(diff, std::abs(double(co[h * D + d]) / cs[h] -
                                     double(dout[h * D + d]) / ds[h]));
    }
  }
  std::printf("%8lld %10.4f %18.4f %16.4f %10.2e\n", static_cast<long long>(n),
              ms_codes, ms_decode, ms_dense, diff);
  std::fflush(stdout);
  return true;
}

// Parses "--name VALUE" or "--name=VALUE"; *value is the text.
bool Flag(int argc, char** argv, int* i, const char* name, std::string* value) {
  const std::string arg = argv[*i], flag = std::string("--") + name;
  if (arg == flag && *i + 1 < argc) {
    *value = argv[++*i];
    return true;
  }
  if (arg.rfind(flag + "=", 0) == 0) {
    *value = arg.substr(flag.size() + 1);
    return true;
  }
  return false;
}

// A positive integer, or exit 2 with a message. No CLI library: this program
// also builds in the CUDA-only GPU check (tests/gpu/).
int64_t Positive(const char* name, const std::string& text, bool allow_zero) {
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < (allow_zero ? 0 : 1)) {
    std::fprintf(stderr,
                 "cuda_attention_bench: --%s needs a %s integer, not '%s'\n",
                 name, allow_zero ? "non-negative" : "positive", text.c_str());
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    std::string v;
    const std::string arg = argv[i];
    if (arg == "--quick") {
      c.lengths = {1024, 8192, 65536};
      c.reps = 5;
    } else if (Flag(argc, argv, &i, "lengths", &v)) {
      c.lengths.clear();
      size_t start = 0;
      while (start <= v.size()) {
        const size_t comma = std::min(v.find(',', start), v.size());
        c.lengths.push_back(
            Positive("lengths", v.substr(start, comma - start), false));
        start = comma + 1;
      }
    } else if (Flag(argc, argv, &i, "dim", &v)) {
      c.dim = static_cast<int>(Positive("dim", v, false));
      if (c.dim != 64 && c.dim != 128) {
        std::fprintf(stderr, "cuda_attention_bench: --dim is 64 or 128\n");
        return 2;
      }
    } else if (Flag(argc, argv, &i, "kv-heads", &v)) {
      c.kv_heads = static_cast<int>(Positive("kv-heads", v, false));
    } else if (Flag(argc, argv, &i, "group", &v)) {
      c.group = static_cast<int>(Positive("group", v, false));
    } else if (Flag(argc, argv, &i, "reps", &v)) {
      c.reps = static_cast<int>(Positive("reps", v, false));
    } else if (Flag(argc, argv, &i, "warmup", &v)) {
      c.warmup = static_cast<int>(Positive("warmup", v, true));
    } else if (Flag(argc, argv, &i, "split", &v)) {
      c.split = static_cast<int>(Positive("split", v, true));
    } else {
      std::fprintf(stderr,
                   "usage: cuda_attention_bench [--quick] [--lengths "
                   "N,N,...] [--dim 64|128] [--kv-heads H] [--group G] "
                   "[--reps R] [--warmup W] [--split T]\n");
      return arg == "--help" ? 0 : 2;
    }
  }
  if (c.group > vqkv::cuda::kMaxAttentionGroup ||
      c.kv_heads > vqkv::cuda::kMaxAttentionProblems) {
    std::fprintf(stderr,
                 "cuda_attention_bench: --group <= %d, --kv-heads "
                 "<= %lld\n",
                 vqkv::cuda::kMaxAttentionGroup,
                 static_cast<long long>(vqkv::cuda::kMaxAttentionProblems));
    return 2;
  }

  std::string why_not;
  if (vqkv::cuda::CudaDeviceCount(&why_not) == 0) {
    std::fprintf(stderr, "cuda_attention_bench: skipped: %s\n",
                 why_not.c_str());
    return 77;
  }
  std::printf("device: %s\n", vqkv::cuda::CudaDeviceDescription(0).c_str());
  std::printf(
      "D=%d, keys %dx1024, values %dx512, %d kv heads x group %d, one query "
      "token; median of %d calls after %d warm-up (CUDA events, ms per call, "
      "data on the GPU)\n",
      c.dim, c.dim == 64 ? 28 : 56, c.dim == 64 ? 8 : 16, c.kv_heads, c.group,
      c.reps, c.warmup);
  std::printf("%8s %10s %18s %16s %10s\n", "tokens", "codes_ms",
              "decode_attend_ms", "fp16_attend_ms", "max_diff");
  cudaStream_t stream;
  if (cudaStreamCreate(&stream) != cudaSuccess) {
    std::fprintf(stderr, "cudaStreamCreate failed\n");
    return 1;
  }
  for (const int64_t n : c.lengths) {
    if (!Run(c, n, stream)) return 1;
  }
  cudaStreamDestroy(stream);
  return 0;
}
