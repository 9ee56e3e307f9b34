// Measures VqCodec at the paper rate for one layer of a D=64 model on
// synthetic key/value-like vectors: fit time, reconstruction error (relative
// MSE on held-out vectors, and on the training keys) and encode/decode
// throughput in tokens/s (one token = one key and one value vector of D
// floats), with and without the RoPE key split, greedy and beam.
//
//   vq_fit_bench [train_vectors=50000] [test_vectors=10000]
//                [kmeans_iterations=6] [max_points_per_centroid=32]
//                [head_dim=64] [max_training_points=0 (all)]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <vector>

#include "kernels/rvq.h"
#include "kernels/vq_codec.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

// Gaussian with decaying per-dimension scale and a few outlier channels.
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
    // Hugging Face layout: pair (f, f + D/2) rotates with frequency index f.
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

}  // namespace

int main(int argc, char** argv) {
  const int64_t n_train = argc > 1 ? std::atoll(argv[1]) : 50000;
  const int64_t n_test = argc > 2 ? std::atoll(argv[2]) : 10000;
  const int iters = argc > 3 ? std::atoi(argv[3]) : 6;
  const int ppc = argc > 4 ? std::atoi(argv[4]) : 32;
  const int D = argc > 5 ? std::atoi(argv[5]) : 64;
  const int64_t max_train = argc > 6 ? std::atoll(argv[6]) : 0;
  const vqkv::KvLayout layout{1, 1, D};

  const std::vector<float> ktrain = Vectors(n_train, D, 1, true);
  const std::vector<float> vtrain = Vectors(n_train, D, 2, false);
  const std::vector<float> ktest = Vectors(n_test, D, 3, true);
  const std::vector<float> vtest = Vectors(n_test, D, 4, false);
  std::printf(
      "D=%d train=%lld test=%lld kmeans_iterations=%d "
      "max_points_per_centroid=%d max_training_points=%lld\n",
      D, static_cast<long long>(n_train), static_cast<long long>(n_test), iters,
      ppc, static_cast<long long>(max_train));
  std::printf("%-20s %5s %8s %9s %9s %9s %9s %11s %11s\n", "key split", "beam",
              "fit_s", "fit_cpu_s", "k_relmse", "v_relmse", "k_train",
              "enc_tok/s", "dec_tok/s");

  for (vqkv::KeySplit split :
       {vqkv::KeySplit::kNone, vqkv::KeySplit::kRopeHalfRotate}) {
    vqkv::VqConfig cfg;
    cfg.key_split = split;
    cfg.kmeans_iterations = iters;
    cfg.max_points_per_centroid = ppc;
    cfg.max_training_points = max_train;
    auto codec = vqkv::VqCodec::Create(layout, cfg);
    if (!codec.ok()) {
      std::fprintf(stderr, "%s\n", codec.status().ToString().c_str());
      return 1;
    }
    auto t0 = Clock::now();
    const std::clock_t c0 = std::clock();
    absl::Status st = (*codec)->Fit(ktrain.data(), vtrain.data(), n_train, {});
    const double fit_s = Seconds(t0);
    // Process CPU time over all threads: the fit's cost on a busy machine.
    const double fit_cpu_s = double(std::clock() - c0) / CLOCKS_PER_SEC;
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 1;
    }
    // Training-set key error (greedy) for the overfitting check.
    std::vector<uint8_t> tp((*codec)->EncodedBytes(n_train));
    std::vector<float> kt(ktrain.size()), vt(vtrain.size());
    (void)(*codec)->Encode(ktrain.data(), vtrain.data(), n_train, tp.data(),
                           tp.size());
    (void)(*codec)->Decode(tp.data(), tp.size(), n_train, kt.data(), vt.data());
    const double k_train =
        vqkv::RelativeMse(ktrain.data(), kt.data(), n_train, D);
    std::string bytes = *(*codec)->codebooks().Serialize();
    for (int beam : {1, 4, 16}) {
      auto c2 = vqkv::VqCodec::FromCodebookSet(
          *vqkv::CodebookSet::Deserialize(bytes), beam);
      std::vector<uint8_t> payload((*c2)->EncodedBytes(n_test));
      t0 = Clock::now();
      st = (*c2)->Encode(ktest.data(), vtest.data(), n_test, payload.data(),
                         payload.size());
      const double enc_s = Seconds(t0);
      std::vector<float> k2(ktest.size()), v2(vtest.size());
      t0 = Clock::now();
      st.Update((*c2)->Decode(payload.data(), payload.size(), n_test, k2.data(),
                              v2.data()));
      const double dec_s = Seconds(t0);
      if (!st.ok()) {
        std::fprintf(stderr, "%s\n", st.ToString().c_str());
        return 1;
      }
      std::printf("%-20s %5d %8.2f %9.2f %9.5f %9.5f %9.5f %11.0f %11.0f\n",
                  vqkv::KeySplitName(split), beam, fit_s, fit_cpu_s,
                  vqkv::RelativeMse(ktest.data(), k2.data(), n_test, D),
                  vqkv::RelativeMse(vtest.data(), v2.data(), n_test, D),
                  k_train, n_test / enc_s, n_test / dec_s);
    }
  }
  return 0;
}
