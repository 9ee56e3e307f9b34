// One decode step's attention for one layer, over N past tokens, three ways
// in the same run:
//   codes           CodeAttention::Attend (kernels/code_attention.h) per kv
//                   head on the unpacked VQ codes: per-stage query tables,
//                   table look-ups per token, value weights per codeword
//                   times the codebooks;
//   decode+attend   decode the same codes to float K/V (ResidualQuantizer::
//                   Decode per key group and for values), then the runtime's
//                   exact attention (model::CausalAttention);
//   exact           model::CausalAttention over float K/V (fp16-rounded, as
//                   the runtime's exact cache holds them): the peer.
// Shape: SmolLM2-135M (9 query heads, 3 kv heads, head_dim 64), the default
// codec rate (keys 14 + 14 stages x 10 bits with the RoPE split, values 8 x 9
// bits); random codebooks and codes (timing does not depend on their
// values). One thread (OpenBLAS too, --threads). Times are medians over
// --repeats runs after --warmup runs, in ms per layer per step, wall time
// and, in parentheses, the thread's CPU time (steadier on a shared
// machine). The
// "max |diff|" column is codes vs exact attention over the decoded K/V.
//
//   code_attention_bench [--lengths 1024,4096,16384,65536] [--repeats 15]
//                        [--warmup 3] [--threads 1] [--sketch-bits 0]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "kernels/bitpack.h"
#include "kernels/code_attention.h"
#include "kernels/codebook_set.h"
#include "kernels/cpu/cpu_features.h"
#include "model/attention.h"
#include "model/kv_cache.h"
#include "tests/testing/random_vq_codec.h"

// Present when the BLAS in use is OpenBLAS; weak so other BLASes link too.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace {

using Clock = std::chrono::steady_clock;
using vqkv::CodeAttention;
using vqkv::KvLayout;
using vqkv::VqCodec;

constexpr int kHeads = 9, kKvHeads = 3, kDim = 64;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double ThreadCpuMs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// Median wall and thread CPU milliseconds of f over `repeats` runs after
// `warmup` runs. On a shared machine the CPU time is the steadier measure.
struct Timing {
  double wall = 0, cpu = 0;
};
template <typename F>
Timing TimeMs(int warmup, int repeats, F&& f) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> wall, cpu;
  for (int i = 0; i < repeats; ++i) {
    const Clock::time_point a = Clock::now();
    const double c = ThreadCpuMs();
    f();
    cpu.push_back(ThreadCpuMs() - c);
    wall.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - a).count());
  }
  return Timing{Median(wall), Median(cpu)};
}

std::string CpuName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      return line.substr(line.find(':') + 2);
    }
  }
  return "unknown";
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
    std::exit(1);
  }
}

std::unique_ptr<VqCodec> MakeCodec(int sketch_bits) {
  vqkv::testing::RandomVqCodecSpec spec;
  spec.split = vqkv::KeySplit::kRopeAdjacentPairs;
  spec.layers = 1;
  spec.kv_heads = kKvHeads;
  spec.head_dim = kDim;
  spec.sketch_bits = sketch_bits;
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      vqkv::testing::RandomVqCodec(spec, 1);
  Check(codec.status());
  return *std::move(codec);
}

std::vector<uint8_t> RandomPayload(const VqCodec& codec, int64_t tokens) {
  absl::StatusOr<std::vector<uint8_t>> p =
      vqkv::testing::RandomVqPayload(codec, tokens, 2);
  Check(p.status());
  return *std::move(p);
}

// Decodes the unpacked codes of all kv heads into keys/values
// [tokens][kv_head][D] (the runtime's layout), group by group.
void DecodeCodes(const VqCodec& codec, const vqkv::VqCodes& codes,
                 int64_t tokens, std::vector<uint16_t>* gcodes,
                 std::vector<float>* gbuf, float* keys, float* values) {
  const vqkv::CodebookSet& set = codec.codebooks();
  const int nk = set.config().key_stages();
  const int64_t vectors = tokens * kKvHeads;
  int offset = 0;
  for (size_t g = 0; g < set.key_group_dims().size(); ++g) {
    const vqkv::ResidualQuantizer& q = set.key(0, 0, static_cast<int>(g));
    const std::vector<int>& dims = set.key_group_dims()[g];
    const int s = q.stages(), dg = q.dim();
    gcodes->resize(static_cast<size_t>(vectors * s));
    for (int64_t i = 0; i < vectors; ++i) {
      std::copy_n(codes.keys.data() + i * nk + offset, s,
                  gcodes->data() + i * s);
    }
    gbuf->resize(static_cast<size_t>(vectors * dg));
    Check(q.Decode(gcodes->data(), vectors, gbuf->data()));
    for (int64_t i = 0; i < vectors; ++i) {
      for (int d = 0; d < dg; ++d) {
        keys[i * kDim + dims[d]] = (*gbuf)[i * dg + d];
      }
    }
    offset += s;
  }
  if (const vqkv::SignSketch* sk = codec.key_sketch(); sk != nullptr) {
    sk->DecodeAdd(codes.sketch.data(), vectors, keys);
  }
  Check(set.value(0, 0).Decode(codes.values.data(), vectors, values));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"attention over VQ codes vs decode-then-attend vs exact"};
  std::vector<int64_t> lengths = {1024, 4096, 16384, 65536};
  int repeats = 15, warmup = 3, threads = 1, sketch_bits = 0;
  app.add_option("--lengths", lengths, "context lengths (past tokens)")
      ->delimiter(',');
  app.add_option("--repeats", repeats, "timed runs per cell (median)");
  app.add_option("--warmup", warmup, "untimed runs first");
  app.add_option("--threads", threads, "OpenBLAS threads");
  app.add_option("--sketch-bits", sketch_bits, "key sketch bits (0 = none)");
  CLI11_PARSE(app, argc, argv);
  if (openblas_set_num_threads != nullptr) openblas_set_num_threads(threads);
  repeats = std::max(repeats, 1);

  const std::unique_ptr<VqCodec> codec = MakeCodec(sketch_bits);
  const int group = kHeads / kKvHeads;
  const float scale = 1.0f / std::sqrt(float(kDim));
  std::printf(
      "code_attention_bench: %s, %d cores online, SIMD %s, 1 thread; "
      "SmolLM2-135M shape (%d heads, %d kv heads, D %d), codec %s\n"
      "ms per layer for one decode step: wall (thread CPU), median of %d "
      "after %d warm-up\n\n",
      CpuName().c_str(), static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)),
      vqkv::cpu::SimdLevelName(), kHeads, kKvHeads, kDim,
      codec->Descriptor().c_str(), repeats, warmup);
  std::printf(
      "| tokens | codes ms | decode+attend ms | exact fp32 ms | "
      "codes / exact | K+V bytes codes / fp16 | max |diff| |\n"
      "|---:|---:|---:|---:|---:|---:|---:|\n");

  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(kHeads) * kDim);
  for (float& x : q) x = 2.0f * nd(rng);

  std::vector<CodeAttention> atts;
  for (int h = 0; h < kKvHeads; ++h) {
    absl::StatusOr<CodeAttention> a = CodeAttention::Create(*codec, 0, h);
    Check(a.status());
    atts.push_back(*std::move(a));
  }

  for (int64_t n : lengths) {
    const std::vector<uint8_t> payload = RandomPayload(*codec, n);
    absl::StatusOr<vqkv::VqCodes> codes =
        vqkv::UnpackVqCodes(*codec, payload.data(), payload.size(), n);
    Check(codes.status());
    const size_t elems = static_cast<size_t>(n) * kKvHeads * kDim;
    std::vector<float> keys(elems), values(elems);
    std::vector<uint16_t> gcodes;
    std::vector<float> gbuf;
    DecodeCodes(*codec, *codes, n, &gcodes, &gbuf, keys.data(), values.data());
    std::vector<float> exact_k = keys, exact_v = values;
    vqkv::model::RoundToFp16(exact_k.data(), static_cast<int64_t>(elems));
    vqkv::model::RoundToFp16(exact_v.data(), static_cast<int64_t>(elems));

    // (a) codes.
    std::vector<float> out_codes(static_cast<size_t>(kHeads) * kDim);
    vqkv::CodeAttentionScratch scratch;
    vqkv::AttentionPartial partial;
    const Timing t_codes = TimeMs(warmup, repeats, [&] {
      for (int h = 0; h < kKvHeads; ++h) {
        const vqkv::CodedTokens tok = CodedTokensOf(*codec, *codes, n, 0, h);
        Check(atts[h].Attend(q.data() + h * group * kDim, group, scale, tok,
                             &partial, &scratch));
        partial.Normalize(out_codes.data() + h * group * kDim);
      }
    });

    // (b) decode + attend, (c) exact: the runtime's attention, one query at
    // position n - 1 over [0, n).
    const vqkv::model::AttentionShape shape{kHeads, kKvHeads, kDim};
    vqkv::model::AttentionScratch ascratch;
    std::vector<float> out_dec(q.size()), out_exact(q.size());
    std::vector<float> dk(elems), dv(elems);
    const Timing t_decode = TimeMs(warmup, repeats, [&] {
      DecodeCodes(*codec, *codes, n, &gcodes, &gbuf, dk.data(), dv.data());
      vqkv::model::KvCache::LayerView view;
      view.tokens = n;
      view.keys = dk.data();
      view.values = dv.data();
      Check(vqkv::model::CausalAttention(q.data(), 1, n - 1, shape, view,
                                         out_dec.data(), &ascratch));
    });
    const Timing t_exact = TimeMs(warmup, repeats, [&] {
      vqkv::model::KvCache::LayerView view;
      view.tokens = n;
      view.keys = exact_k.data();
      view.values = exact_v.data();
      Check(vqkv::model::CausalAttention(q.data(), 1, n - 1, shape, view,
                                         out_exact.data(), &ascratch));
    });
    float diff = 0;
    for (size_t i = 0; i < q.size(); ++i) {
      diff = std::max(diff, std::abs(out_codes[i] - out_dec[i]));
    }
    const double code_bytes =
        static_cast<double>(codec->EncodedBytes(n));  // packed, all heads
    const double fp16_bytes = 2.0 * 2 * static_cast<double>(elems);
    std::printf(
        "| %ld | %.3f (%.3f) | %.3f (%.3f) | %.3f (%.3f) | %.2fx (%.2fx) | "
        "%.0f KiB / %.0f KiB | %.1e |\n",
        static_cast<long>(n), t_codes.wall, t_codes.cpu, t_decode.wall,
        t_decode.cpu, t_exact.wall, t_exact.cpu, t_codes.wall / t_exact.wall,
        t_codes.cpu / t_exact.cpu, code_bytes / 1024, fp16_bytes / 1024, diff);
    std::fflush(stdout);
  }
  return 0;
}
