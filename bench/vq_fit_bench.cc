// Fit time and error of the VQ codec for one layer of a D=64 model at the
// paper rate (keys 28 x 10 bits, or split 14 + 14 on the two rotary
// frequency groups of 32 dims; values 8 x 9 bits), on synthetic key/value-
// like vectors, next to faiss's ResidualQuantizer fitted on the same vectors
// in the same run.
//
// Rows (one per recipe; every row fits keys and values of one layer):
//   vq                 VqConfig defaults (shared seeding, 2 Lloyd iterations
//                      on up to 128 points per centroid), no key split
//   vq split           the same with the RoPE key split (Hugging Face layout)
//   vq refine2         defaults + 2 codebook refinement passes
//   vq kmeans++ (old)  the first implementation's recipe: independent
//                      k-means++ seeding per stage, 6 iterations on 32 points
//                      per centroid
//   faiss              faiss::ResidualQuantizer, Train_default (plain k-means
//                      per stage, random init, faiss's own 256 points per
//                      centroid cap), greedy training (max_beam_size 1),
//                      --faiss-iterations Lloyd iterations
// Columns: fit wall and process CPU seconds, relative MSE of greedy
// encode/decode on held-out vectors (keys, values), and the key error on
// the training vectors (the gap shows overfitting).
//
//   vq_fit_bench [--train 50000] [--test 10000] [--threads 2]
//                [--faiss-iterations 2] [--skip-faiss] [--skip-old]
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "faiss/impl/ResidualQuantizer.h"
#include "kernels/rvq.h"
#include "kernels/vq_codec.h"

// Present when the BLAS in use is OpenBLAS; weak so other BLASes link too.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

// Gaussian with decaying per-dimension scale, a few outlier channels and
// offsets; keys are rotated by RoPE (Hugging Face layout: pair (f, f + D/2)
// rotates with frequency index f) at position i mod 8192.
std::vector<float> Vectors(int64_t n, int dim, uint64_t seed, bool rope) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * dim);
  for (int64_t i = 0; i < n; ++i) {
    for (int d = 0; d < dim; ++d) {
      float scale = 0.2f + 1.5f * std::exp(-3.0f * d / dim);
      if (d % 17 == 3) scale *= 4.0f;
      const float mean = d % 23 == 5 ? 3.0f : 0.0f;
      x[i * dim + d] = mean + scale * normal(rng);
    }
    if (!rope) continue;
    const double pos = static_cast<double>(i % 8192);
    float* v = x.data() + i * dim;
    for (int f = 0; f < dim / 2; ++f) {
      const double th = pos * std::pow(10000.0, -2.0 * f / dim);
      const float c = std::cos(th), s = std::sin(th);
      const float a = v[f], b = v[f + dim / 2];
      v[f] = a * c - b * s;
      v[f + dim / 2] = a * s + b * c;
    }
  }
  return x;
}

struct Data {
  int dim = 64;
  int64_t n_train = 0, n_test = 0;
  std::vector<float> ktrain, vtrain, ktest, vtest;
};

struct Row {
  std::string name;
  double fit_s = 0, fit_cpu_s = 0;
  double k_test = 0, v_test = 0, k_train = 0;
};

void PrintRow(const Row& r) {
  std::printf("%-20s %8.2f %9.2f %10.5f %10.5f %10.5f\n", r.name.c_str(),
              r.fit_s, r.fit_cpu_s, r.k_test, r.v_test, r.k_train);
  std::fflush(stdout);
}

// Greedy relative MSE of a codec on n key/value pairs.
bool CodecMse(const vqkv::VqCodec& codec, const float* k, const float* v,
              int64_t n, int dim, double* k_mse, double* v_mse) {
  std::vector<uint8_t> payload(codec.EncodedBytes(n));
  std::vector<float> k2(static_cast<size_t>(n) * dim),
      v2(static_cast<size_t>(n) * dim);
  absl::Status s = codec.Encode(k, v, n, payload.data(), payload.size());
  s.Update(
      codec.Decode(payload.data(), payload.size(), n, k2.data(), v2.data()));
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return false;
  }
  *k_mse = vqkv::RelativeMse(k, k2.data(), n, dim);
  if (v_mse != nullptr) *v_mse = vqkv::RelativeMse(v, v2.data(), n, dim);
  return true;
}

bool RunVq(const std::string& name, const vqkv::VqConfig& cfg, const Data& d) {
  const vqkv::KvLayout layout{1, 1, d.dim};
  auto codec = vqkv::VqCodec::Create(layout, cfg);
  if (!codec.ok()) {
    std::fprintf(stderr, "%s\n", codec.status().ToString().c_str());
    return false;
  }
  std::fprintf(stderr, "%s: fitting\n", name.c_str());
  Row r{name};
  const auto t0 = Clock::now();
  const std::clock_t c0 = std::clock();
  absl::Status st = (*codec)->Fit(d.ktrain.data(), d.vtrain.data(), d.n_train,
                                  vqkv::FitOptions{});
  r.fit_s = Seconds(t0);
  // Process CPU time over all threads: the fit's cost on a busy machine.
  r.fit_cpu_s = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
    return false;
  }
  if (!CodecMse(**codec, d.ktest.data(), d.vtest.data(), d.n_test, d.dim,
                &r.k_test, &r.v_test) ||
      !CodecMse(**codec, d.ktrain.data(), d.vtrain.data(), d.n_train, d.dim,
                &r.k_train, nullptr)) {
    return false;
  }
  PrintRow(r);
  return true;
}

double FaissMse(faiss::ResidualQuantizer& rq, const float* x, int64_t n,
                int dim) {
  std::vector<uint8_t> codes(rq.code_size * n);
  std::vector<float> y(static_cast<size_t>(n) * dim);
  rq.compute_codes(x, codes.data(), n);
  rq.decode(codes.data(), y.data(), n);
  return vqkv::RelativeMse(x, y.data(), n, dim);
}

void RunFaiss(const Data& d, int iterations) {
  std::fprintf(stderr, "faiss: fitting\n");
  auto make = [&](int stages, int bits) {
    auto rq = std::make_unique<faiss::ResidualQuantizer>(d.dim, stages, bits);
    rq->train_type = faiss::ResidualQuantizer::Train_default;
    rq->cp.niter = iterations;
    rq->max_beam_size = 1;
    return rq;
  };
  auto keys = make(d.dim * 56 / 128, 10);
  auto values = make(d.dim * 16 / 128, 9);
  Row r{"faiss niter=" + std::to_string(iterations)};
  const auto t0 = Clock::now();
  const std::clock_t c0 = std::clock();
  keys->train(d.n_train, d.ktrain.data());
  values->train(d.n_train, d.vtrain.data());
  r.fit_s = Seconds(t0);
  r.fit_cpu_s = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  r.k_test = FaissMse(*keys, d.ktest.data(), d.n_test, d.dim);
  r.v_test = FaissMse(*values, d.vtest.data(), d.n_test, d.dim);
  r.k_train = FaissMse(*keys, d.ktrain.data(), d.n_train, d.dim);
  PrintRow(r);
}

}  // namespace

int main(int argc, char** argv) {
  Data d;
  d.n_train = 50000;
  d.n_test = 10000;
  int threads = 2;
  int faiss_iterations = 2;
  bool skip_faiss = false, skip_old = false;
  CLI::App app{
      "VQ codec fit time and error for one D=64 layer at the paper rate, "
      "next to faiss's ResidualQuantizer"};
  app.add_option("--train", d.n_train, "training vectors (keys and values)")
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 26));
  app.add_option("--test", d.n_test, "held-out vectors")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "OpenBLAS and OpenMP threads")
      ->check(CLI::Range(1, 256));
  app.add_option("--faiss-iterations", faiss_iterations,
                 "faiss k-means iterations per stage")
      ->check(CLI::Range(1, 100));
  app.add_flag("--skip-faiss", skip_faiss, "do not run faiss");
  app.add_flag("--skip-old", skip_old,
               "do not run the first implementation's recipe");
  CLI11_PARSE(app, argc, argv);
  omp_set_num_threads(threads);
  if (openblas_set_num_threads != nullptr) openblas_set_num_threads(threads);

  d.ktrain = Vectors(d.n_train, d.dim, 1, true);
  d.vtrain = Vectors(d.n_train, d.dim, 2, false);
  d.ktest = Vectors(d.n_test, d.dim, 3, true);
  d.vtest = Vectors(d.n_test, d.dim, 4, false);
  std::printf(
      "vq_fit_bench: one layer, D=%d, keys %dx1024, values %dx512; fit on "
      "%lld vectors, test on %lld; %d thread(s); greedy encode\n",
      d.dim, d.dim * 56 / 128, d.dim * 16 / 128,
      static_cast<long long>(d.n_train), static_cast<long long>(d.n_test),
      threads);
  std::printf("%-20s %8s %9s %10s %10s %10s\n", "recipe", "fit_s", "fit_cpu_s",
              "relMSE K", "relMSE V", "K train");

  vqkv::VqConfig base;
  if (!RunVq("vq", base, d)) return 1;
  vqkv::VqConfig split = base;
  split.key_split = vqkv::KeySplit::kRopeHalfRotate;
  if (!RunVq("vq split 14+14", split, d)) return 1;
  vqkv::VqConfig refine = base;
  refine.training.refine_passes = 2;
  if (!RunVq("vq refine2", refine, d)) return 1;
  if (!skip_old) {
    vqkv::VqConfig old = base;
    old.training.kmeanspp_seeding = true;
    old.training.kmeans_iterations = 6;
    old.training.max_points_per_centroid = 32;
    if (!RunVq("vq kmeans++ (old)", old, d)) return 1;
  }
  if (!skip_faiss) RunFaiss(d, faiss_iterations);
  return 0;
}
