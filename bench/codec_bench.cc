// Codec benchmark: the VQ codec (greedy and beam encode) next to faiss's
// ResidualQuantizer at the same stages and bits, and the KIVI and fp16
// baselines, on the same vectors in the same run.
//
// For each head_dim D (64 and 128 by default) at the paper's rate (keys
// D*56/128 stages x 10 bits, values D*16/128 stages x 9 bits, i.e. 2.75
// bits/element), it fits on --train vectors, then times encode and decode of
// --test (token, head) pairs of one key and one value vector each, and prints
// one row per method: bits/element, compression ratio against fp16, encode
// and decode throughput in vectors/s (a vector = one key or one value head
// vector, so a pair counts two) and GB/s of fp16 KV (2 bytes per element),
// and the reconstruction relative MSE sum ||x - x'||^2 / sum ||x||^2 for keys
// and values. Rows:
//   fp16         Fp16Codec (the uncompressed reference)
//   kivi-2/4     KiviCodec, group 32: keys per channel, values per token
//   vq greedy    VqCodec (kernels/vq_codec.h), greedy encode
//   vq beamB     the same codebooks, beam search of width B
//   vq simvq     VqCodec fitted with RvqFit::kSimVq (kernels/simvq.h) from
//                the same seeds, --simvq-iterations map updates, greedy
//   vq simvq+km  the same followed by the k-means rows' Lloyd iterations
//   faiss greedy faiss::ResidualQuantizer, same stages/bits, fitted on the
//                same training vectors: train_type Train_default (plain
//                k-means per stage: random init, faiss's 256 points per
//                centroid cap), --faiss-iterations Lloyd iterations (default:
//                the VQ codec's), greedy training (max_beam_size 1), encode
//                max_beam_size 1
//   faiss beamB  the same faiss codebooks, encode max_beam_size B
//   memcpy       a floor: the test vectors (float32, as Encode reads and
//                Decode writes them) copied with memcpy, best of 5 runs. The
//                test set is --test x 2 x D x 4 bytes, so it sits in cache.
// After the table, a line puts vq greedy decode next to two floors: that
// memcpy of its output, and the codeword rows it gathers (stages x D x 4
// bytes per vector, from codebooks of 7 MiB at D=64 and 33 MiB at D=128,
// past the caches) at the DRAM copy rate (a 256 MiB memcpy, measured once
// at the start, bytes read plus written per second).
// VQ and faiss rows show their fit time (wall seconds, keys + values) in the
// "fit s" column; throughput is encode/decode only. All methods run with
// --threads threads (OpenMP and OpenBLAS; 1 by default for a per-core
// comparison).
//
// Data: synthetic KV-like vectors by default (low-rank structure, per-channel
// scales and offsets, a few outlier key channels), or real vectors from raw
// float32 [n][D] files given with --keys-file/--values-file/--file-dim.
// Progress goes to stderr, the table to stdout.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "faiss/impl/ResidualQuantizer.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/baselines/kivi_codec.h"
#include "kernels/codec.h"
#include "kernels/rvq.h"
#include "kernels/vq_codec.h"

// Present when the BLAS in use is OpenBLAS; weak so other BLASes link too.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Options {
  int64_t train = 20000;
  int64_t test = 10000;
  int beam = 4;
  int threads = 1;
  int kmeans_iterations = 0;  // 0 = VqConfig's default
  int faiss_iterations = 0;   // 0 = the VQ codec's iteration count
  uint64_t seed = 1;
  std::vector<int> dims = {64, 128};
  std::string keys_file, values_file;
  int file_dim = 0;
  bool skip_faiss = false;
  bool skip_simvq = false;
  int simvq_iterations = -1;  // -1 = RvqTraining's default
  bool kmeanspp = false;      // RvqTraining::kmeanspp_seeding for the VQ rows
};

// Train and test vectors of one D, keys and values, [n][D] each.
struct Data {
  int dim = 0;
  std::string source;
  int64_t n_train = 0, n_test = 0;
  std::vector<float> train_k, train_v, test_k, test_v;
};

// KV-like vectors: x = scale .* (W z + 0.3 e) + offset with z ~ N(0, I_r),
// so dimensions are correlated (rank r), channels have lognormal scales and
// offsets, and keys have a few outlier channels 8x larger, as attention keys
// do.
std::vector<float> SyntheticKv(int64_t n, int dim, bool keys, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int rank = keys ? dim / 4 : dim / 2;
  std::vector<float> w(static_cast<size_t>(dim) * rank);
  for (float& v : w) v = normal(rng) / std::sqrt(static_cast<float>(rank));
  std::vector<float> scale(dim), offset(dim);
  for (int d = 0; d < dim; ++d) {
    scale[d] = std::exp((keys ? 0.6f : 0.3f) * normal(rng));
    offset[d] = (keys ? 0.5f : 0.1f) * normal(rng) * scale[d];
  }
  if (keys) {
    for (int d = 0; d < dim; d += 16) scale[(d * 7 + 3) % dim] *= 8.0f;
  }
  // Fixed structure (w, scale, offset) from the seed; the draws of z and e
  // continue from the same generator, so train and test share a
  // distribution when generated together.
  std::vector<float> x(static_cast<size_t>(n) * dim), z(rank);
  for (int64_t i = 0; i < n; ++i) {
    for (float& v : z) v = normal(rng);
    for (int d = 0; d < dim; ++d) {
      float acc = 0.3f * normal(rng);
      for (int r = 0; r < rank; ++r) acc += w[d * rank + r] * z[r];
      x[i * dim + d] = scale[d] * acc + offset[d];
    }
  }
  return x;
}

bool ReadRaw(const std::string& path, int dim, std::vector<float>* out) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return false;
  const std::streamsize bytes = f.tellg();
  const int64_t n = bytes / (4 * static_cast<int64_t>(dim));
  out->resize(static_cast<size_t>(n) * dim);
  f.seekg(0);
  return static_cast<bool>(
      f.read(reinterpret_cast<char*>(out->data()), n * dim * 4));
}

void Split(const std::vector<float>& all, int dim, int64_t n_train,
           int64_t n_test, std::vector<float>* train,
           std::vector<float>* test) {
  const int64_t n = static_cast<int64_t>(all.size()) / dim;
  train->assign(all.begin(), all.begin() + n_train * dim);
  test->assign(all.begin() + (n - n_test) * dim, all.end());
}

struct Row {
  std::string method;
  double key_bits = 0, value_bits = 0;
  double encode_s = 0, decode_s = 0;
  double mse_k = 0, mse_v = 0;
  double fit_s = 0;  // 0 = no fit
  // A row that only moves bytes (memcpy): bits, ratio and errors print "-".
  bool copy_only = false;
};

void PrintHeader() {
  std::printf("%-5s %-13s %7s %7s %7s %7s %11s %8s %11s %8s %10s %10s %7s\n",
              "D", "method", "bits K", "bits V", "bits", "ratio", "enc vec/s",
              "enc GB/s", "dec vec/s", "dec GB/s", "relMSE K", "relMSE V",
              "fit s");
}

void PrintRow(int dim, int64_t n, const Row& r) {
  const double vectors = 2.0 * n, bytes = vectors * dim * 2;
  const double bits = 0.5 * (r.key_bits + r.value_bits);
  char fit[32] = "-";
  if (r.fit_s > 0) std::snprintf(fit, sizeof(fit), "%.1f", r.fit_s);
  if (r.copy_only) {
    std::printf(
        "%-5d %-13s %7s %7s %7s %7s %11.4g %8.3f %11.4g %8.3f %10s "
        "%10s %7s\n",
        dim, r.method.c_str(), "-", "-", "-", "-", vectors / r.encode_s,
        bytes / r.encode_s / 1e9, vectors / r.decode_s,
        bytes / r.decode_s / 1e9, "-", "-", fit);
    std::fflush(stdout);
    return;
  }
  std::printf(
      "%-5d %-13s %7.3f %7.3f %7.3f %6.2f%% %11.4g %8.3f %11.4g %8.3f %10.4g "
      "%10.4g %7s\n",
      dim, r.method.c_str(), r.key_bits, r.value_bits, bits,
      100.0 * (1.0 - bits / 16.0), vectors / r.encode_s,
      bytes / r.encode_s / 1e9, vectors / r.decode_s, bytes / r.decode_s / 1e9,
      r.mse_k, r.mse_v, fit);
  std::fflush(stdout);
}

// The shortest of `reps` timed runs of `fn`, in seconds (copies are noisy;
// the fastest run is the one the machine did not disturb).
template <typename Fn>
double BestSeconds(int reps, Fn fn) {
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, Seconds(t0, Clock::now()));
  }
  return best;
}

// Bytes read plus written per second by a memcpy of 256 MiB (past every
// cache): the rate DRAM moves data at on this machine. Best of 3.
double DramCopyRate() {
  const size_t n = size_t{256} << 20;
  std::vector<char> a(n, 1), b(n, 2);
  const double best =
      BestSeconds(3, [&] { std::memcpy(b.data(), a.data(), n); });
  if (b[n / 2] != 1) std::fprintf(stderr, "memcpy: copy mismatch\n");
  return 2.0 * n / best;
}

// The cache floor: the float32 test vectors copied with memcpy, the bytes
// Encode reads and Decode writes. Best of 5 (a copy this small is noisy),
// the same time in the encode and decode columns.
Row MeasureMemcpy(const Data& data) {
  std::vector<float> k(data.test_k.size()), v(data.test_v.size());
  const size_t kb = k.size() * sizeof(float), vb = v.size() * sizeof(float);
  std::memcpy(k.data(), data.test_k.data(), kb);  // warm-up: fault pages in
  std::memcpy(v.data(), data.test_v.data(), vb);
  const double best = BestSeconds(5, [&] {
    std::memcpy(k.data(), data.test_k.data(), kb);
    std::memcpy(v.data(), data.test_v.data(), vb);
  });
  // Keep the copies observable so they are not optimised away.
  if (k[0] != data.test_k[0] || v.back() != data.test_v.back()) {
    std::fprintf(stderr, "memcpy: copy mismatch\n");
  }
  Row r;
  r.method = "memcpy";
  r.copy_only = true;
  r.encode_s = r.decode_s = best;
  return r;
}

// Encodes and decodes the test set through the Codec interface.
bool MeasureCodec(const std::string& name, const vqkv::Codec& codec,
                  const Data& data, Row* row) {
  const int64_t n = data.n_test;
  std::vector<uint8_t> payload(codec.EncodedBytes(n));
  std::vector<float> k(data.test_k.size()), v(data.test_v.size());
  std::fprintf(stderr, "[D=%d] %s: encode/decode %lld pairs\n", data.dim,
               name.c_str(), static_cast<long long>(n));
  // Untimed warm-up on a prefix: code paths, CPU dispatch and allocator.
  const int64_t warm = std::min<int64_t>(n, 256);
  std::vector<uint8_t> warm_payload(codec.EncodedBytes(warm));
  if (!codec
           .Encode(data.test_k.data(), data.test_v.data(), warm,
                   warm_payload.data(), warm_payload.size())
           .ok() ||
      !codec
           .Decode(warm_payload.data(), warm_payload.size(), warm, k.data(),
                   v.data())
           .ok()) {
    std::fprintf(stderr, "%s: warm-up failed\n", name.c_str());
    return false;
  }
  const auto t0 = Clock::now();
  absl::Status s = codec.Encode(data.test_k.data(), data.test_v.data(), n,
                                payload.data(), payload.size());
  const auto t1 = Clock::now();
  if (!s.ok()) {
    std::fprintf(stderr, "%s encode: %s\n", name.c_str(), s.ToString().c_str());
    return false;
  }
  s = codec.Decode(payload.data(), payload.size(), n, k.data(), v.data());
  const auto t2 = Clock::now();
  if (!s.ok()) {
    std::fprintf(stderr, "%s decode: %s\n", name.c_str(), s.ToString().c_str());
    return false;
  }
  *row = Row{name,
             codec.KeyBitsPerElement(),
             codec.ValueBitsPerElement(),
             Seconds(t0, t1),
             Seconds(t1, t2),
             vqkv::RelativeMse(data.test_k.data(), k.data(), n, data.dim),
             vqkv::RelativeMse(data.test_v.data(), v.data(), n, data.dim)};
  return true;
}

// faiss's residual quantizer for keys and values at the same stages/bits.
struct FaissPair {
  std::unique_ptr<faiss::ResidualQuantizer> keys, values;
  double fit_s = 0;
};

FaissPair TrainFaiss(const Data& data, int key_stages, int value_stages,
                     int iterations) {
  FaissPair p;
  auto make = [&](int stages, int bits) {
    auto rq =
        std::make_unique<faiss::ResidualQuantizer>(data.dim, stages, bits);
    // Plain k-means per stage with the VQ codec's iteration count (unless
    // --faiss-iterations says otherwise), greedy assignment while training.
    // faiss's default Train_progressive_dim (PCA + progressive-dimension
    // k-means) costs several times more and is not what VqCodec does.
    rq->train_type = faiss::ResidualQuantizer::Train_default;
    rq->cp.niter = iterations;
    rq->max_beam_size = 1;
    return rq;
  };
  p.keys = make(key_stages, 10);
  p.values = make(value_stages, 9);
  const auto t0 = Clock::now();
  p.keys->train(data.n_train, data.train_k.data());
  p.values->train(data.n_train, data.train_v.data());
  p.fit_s = Seconds(t0, Clock::now());
  std::fprintf(stderr, "[D=%d] faiss fit: %.1f s\n", data.dim, p.fit_s);
  return p;
}

Row MeasureFaiss(const std::string& name, FaissPair& p, int beam,
                 const Data& data) {
  const int64_t n = data.n_test;
  p.keys->max_beam_size = beam;
  p.values->max_beam_size = beam;
  std::vector<uint8_t> ck(p.keys->code_size * n), cv(p.values->code_size * n);
  std::vector<float> k(data.test_k.size()), v(data.test_v.size());
  std::fprintf(stderr, "[D=%d] %s: encode/decode %lld pairs\n", data.dim,
               name.c_str(), static_cast<long long>(n));
  const int64_t warm = std::min<int64_t>(n, 256);
  p.keys->compute_codes(data.test_k.data(), ck.data(), warm);
  p.values->compute_codes(data.test_v.data(), cv.data(), warm);
  p.keys->decode(ck.data(), k.data(), warm);
  p.values->decode(cv.data(), v.data(), warm);
  const auto t0 = Clock::now();
  p.keys->compute_codes(data.test_k.data(), ck.data(), n);
  p.values->compute_codes(data.test_v.data(), cv.data(), n);
  const auto t1 = Clock::now();
  p.keys->decode(ck.data(), k.data(), n);
  p.values->decode(cv.data(), v.data(), n);
  const auto t2 = Clock::now();
  return Row{name,
             8.0 * p.keys->code_size / data.dim,
             8.0 * p.values->code_size / data.dim,
             Seconds(t0, t1),
             Seconds(t1, t2),
             vqkv::RelativeMse(data.test_k.data(), k.data(), n, data.dim),
             vqkv::RelativeMse(data.test_v.data(), v.data(), n, data.dim),
             p.fit_s};
}

bool RunDim(const Data& data, const Options& opt, double dram_rate) {
  const int D = data.dim;
  const vqkv::KvLayout layout{.layers = 1, .kv_heads = 1, .head_dim = D};
  std::vector<Row> rows;
  Row row;

  auto fp16 = vqkv::Fp16Codec::Create(layout);
  if (!fp16.ok() || !MeasureCodec("fp16", **fp16, data, &row)) return false;
  rows.push_back(row);
  PrintRow(D, data.n_test, row);
  for (int bits : {2, 4}) {
    auto kivi = vqkv::KiviCodec::Create(layout, vqkv::KiviOptions{bits, 32});
    if (!kivi.ok() ||
        !MeasureCodec("kivi-" + std::to_string(bits), **kivi, data, &row)) {
      return false;
    }
    PrintRow(D, data.n_test, row);
  }

  vqkv::VqConfig config;  // paper rate for this D
  if (opt.kmeans_iterations > 0) {
    config.training.kmeans_iterations = opt.kmeans_iterations;
  }
  config.training.kmeanspp_seeding = opt.kmeanspp;
  // Fits a VQ codec with `c` on the training vectors; prints the fit time.
  auto fit_vq = [&](const std::string& name, const vqkv::VqConfig& c,
                    double* fit_s) -> std::unique_ptr<vqkv::VqCodec> {
    auto vq = vqkv::VqCodec::Create(layout, c);
    if (!vq.ok()) {
      std::fprintf(stderr, "VqCodec: %s\n", vq.status().ToString().c_str());
      return nullptr;
    }
    vqkv::FitOptions fit;
    fit.seed = opt.seed;
    fit.progress = [D, &name](const vqkv::FitProgress& p) {
      std::fprintf(stderr, "\r[D=%d] %s fit: %s (%lld/%lld)        ", D,
                   name.c_str(), p.phase.c_str(),
                   static_cast<long long>(p.done),
                   static_cast<long long>(p.total));
    };
    const auto t0 = Clock::now();
    absl::Status s =
        (*vq)->Fit(data.train_k.data(), data.train_v.data(), data.n_train, fit);
    *fit_s = Seconds(t0, Clock::now());
    std::fprintf(stderr, "\n[D=%d] %s fit: %.1f s\n", D, name.c_str(), *fit_s);
    if (!s.ok()) {
      std::fprintf(stderr, "VqCodec::Fit: %s\n", s.ToString().c_str());
      return nullptr;
    }
    return *std::move(vq);
  };
  double vq_fit_s = 0;
  std::unique_ptr<vqkv::VqCodec> vq = fit_vq("vq", config, &vq_fit_s);
  if (vq == nullptr || !MeasureCodec("vq greedy", *vq, data, &row)) {
    return false;
  }
  row.fit_s = vq_fit_s;
  PrintRow(D, data.n_test, row);
  const double vq_decode_s = row.decode_s;
  auto beam = vqkv::VqCodec::FromCodebookSet(vq->codebooks(), opt.beam);
  if (!beam.ok() ||
      !MeasureCodec("vq beam" + std::to_string(opt.beam), **beam, data, &row)) {
    return false;
  }
  PrintRow(D, data.n_test, row);

  // The SimVQ fit (RvqFit::kSimVq) from the same seeds: pure, and followed
  // by the k-means rows' Lloyd iterations (the hybrid), greedy encode.
  if (!opt.skip_simvq) {
    for (bool hybrid : {false, true}) {
      vqkv::VqConfig sc = config;
      sc.training.fit = vqkv::RvqFit::kSimVq;
      if (opt.simvq_iterations >= 0) {
        sc.training.simvq_iterations = opt.simvq_iterations;
      }
      sc.training.simvq_lloyd_iterations =
          hybrid ? config.training.kmeans_iterations : 0;
      const std::string name = hybrid ? "vq simvq+km" : "vq simvq";
      double fit_s = 0;
      std::unique_ptr<vqkv::VqCodec> simvq = fit_vq(name, sc, &fit_s);
      if (simvq == nullptr || !MeasureCodec(name, *simvq, data, &row)) {
        return false;
      }
      row.fit_s = fit_s;
      PrintRow(D, data.n_test, row);
    }
  }

  if (!opt.skip_faiss) {
    auto resolved = vqkv::VqCodec::ResolveConfig(layout, config);
    if (!resolved.ok()) return false;
    FaissPair fp = TrainFaiss(
        data, resolved->key_stages(), resolved->value_stages,
        opt.faiss_iterations > 0 ? opt.faiss_iterations
                                 : config.training.kmeans_iterations);
    PrintRow(D, data.n_test, MeasureFaiss("faiss greedy", fp, 1, data));
    Row beam_row = MeasureFaiss("faiss beam" + std::to_string(opt.beam), fp,
                                opt.beam, data);
    beam_row.fit_s = 0;  // same codebooks as the greedy row
    PrintRow(D, data.n_test, beam_row);
  }
  const Row floor = MeasureMemcpy(data);
  PrintRow(D, data.n_test, floor);
  auto resolved = vqkv::VqCodec::ResolveConfig(layout, config);
  if (!resolved.ok() || resolved->key_split != vqkv::KeySplit::kNone) {
    std::fprintf(stderr, "codec_bench: expected keys in one group\n");
    return false;
  }
  const double gathered =
      4.0 * D * data.n_test * (resolved->key_stages() + resolved->value_stages);
  std::printf(
      "D=%d: vq greedy decode %.2f ms = %.1fx the memcpy of its output "
      "(%.0f KiB of float32); it gathers %.1f MiB of codeword rows, %.2f ms "
      "at the DRAM copy rate (%.1fx)\n",
      D, 1e3 * vq_decode_s, vq_decode_s / floor.decode_s,
      2.0 * data.n_test * D * sizeof(float) / 1024.0, gathered / (1 << 20),
      1e3 * gathered / dram_rate, vq_decode_s / (gathered / dram_rate));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{
      "VQ codec vs faiss ResidualQuantizer vs KIVI: throughput and "
      "reconstruction error at the paper configuration"};
  app.add_option("--train", opt.train, "training vectors per D and K/V")
      ->check(CLI::PositiveNumber);
  app.add_option("--test", opt.test, "measured (token, head) pairs per D")
      ->check(CLI::PositiveNumber);
  app.add_option("--beam", opt.beam, "beam width of the beam rows")
      ->check(CLI::Range(2, 64));
  app.add_option("--threads", opt.threads, "OpenMP and OpenBLAS threads")
      ->check(CLI::Range(1, 256));
  app.add_option("--kmeans-iterations", opt.kmeans_iterations,
                 "VQ k-means iterations per stage (0 = VqConfig default)")
      ->check(CLI::Range(0, 100));
  app.add_option("--faiss-iterations", opt.faiss_iterations,
                 "faiss k-means iterations per stage (0 = the VQ count)")
      ->check(CLI::Range(0, 100));
  app.add_option("--seed", opt.seed, "seed for data and fitting");
  app.add_option("--dims", opt.dims, "head dims to run (synthetic data)");
  app.add_option("--keys-file", opt.keys_file,
                 "raw float32 [n][D] key vectors (replaces synthetic data)");
  app.add_option("--values-file", opt.values_file,
                 "raw float32 [n][D] value vectors");
  app.add_option("--file-dim", opt.file_dim, "D of the vectors in the files");
  app.add_flag("--skip-faiss", opt.skip_faiss, "do not run faiss");
  app.add_flag("--skip-simvq", opt.skip_simvq, "do not run the SimVQ fits");
  app.add_flag("--kmeanspp", opt.kmeanspp,
               "VQ rows: independent k-means++ seeding per stage instead of "
               "the default shared seeds (RvqTraining::kmeanspp_seeding)");
  app.add_option("--simvq-iterations", opt.simvq_iterations,
                 "SimVQ map updates per stage (-1 = RvqTraining default)")
      ->check(CLI::Range(-1, 1000));
  CLI11_PARSE(app, argc, argv);

  omp_set_num_threads(opt.threads);
  if (openblas_set_num_threads != nullptr) {
    openblas_set_num_threads(opt.threads);
  }

  std::vector<Data> sets;
  if (!opt.keys_file.empty() || !opt.values_file.empty()) {
    if (opt.keys_file.empty() || opt.values_file.empty() || opt.file_dim < 1) {
      std::fprintf(stderr,
                   "--keys-file, --values-file and --file-dim go together\n");
      return 2;
    }
    Data d;
    d.dim = opt.file_dim;
    d.source = "files " + opt.keys_file + ", " + opt.values_file;
    std::vector<float> k, v;
    if (!ReadRaw(opt.keys_file, d.dim, &k) ||
        !ReadRaw(opt.values_file, d.dim, &v)) {
      std::fprintf(stderr, "cannot read the vector files\n");
      return 2;
    }
    const int64_t n =
        static_cast<int64_t>(std::min(k.size(), v.size())) / d.dim;
    k.resize(n * d.dim);
    v.resize(n * d.dim);
    // Disjoint train (first vectors) and test (last vectors) sets.
    d.n_test = std::min(opt.test, n / 2);
    d.n_train = std::min(opt.train, n - d.n_test);
    if (d.n_test < 1 || d.n_train < 1024) {
      std::fprintf(stderr, "the files hold only %lld vectors\n",
                   static_cast<long long>(n));
      return 2;
    }
    Split(k, d.dim, d.n_train, d.n_test, &d.train_k, &d.test_k);
    Split(v, d.dim, d.n_train, d.n_test, &d.train_v, &d.test_v);
    sets.push_back(std::move(d));
  } else {
    for (int dim : opt.dims) {
      if (dim < 8 || dim > 1024 || dim % 8 != 0) {
        std::fprintf(stderr, "--dims: %d is not a multiple of 8 in 8..1024\n",
                     dim);
        return 2;
      }
      Data d;
      d.dim = dim;
      d.source = "synthetic KV-like";
      d.n_train = opt.train;
      d.n_test = opt.test;
      const int64_t n = d.n_train + d.n_test;
      const std::vector<float> k = SyntheticKv(n, dim, true, opt.seed + dim);
      const std::vector<float> v =
          SyntheticKv(n, dim, false, opt.seed + 7 * dim);
      Split(k, dim, d.n_train, d.n_test, &d.train_k, &d.test_k);
      Split(v, dim, d.n_train, d.n_test, &d.train_v, &d.test_v);
      sets.push_back(std::move(d));
    }
  }

  const double dram_rate = DramCopyRate();
  std::printf(
      "codec_bench: %d thread(s); fit on %lld vectors, measure %lld "
      "(token, head) pairs = %lld vectors; a vector is one K or V "
      "head vector; GB/s of fp16 (2 B/element); DRAM copy rate %.1f GB/s "
      "(memcpy of 256 MiB, read + write)\n",
      opt.threads, static_cast<long long>(sets[0].n_train),
      static_cast<long long>(sets[0].n_test),
      static_cast<long long>(2 * sets[0].n_test), dram_rate / 1e9);
  for (const Data& d : sets) {
    std::printf(
        "\nD=%d, %s; VQ and faiss at keys %dx1024, values %dx512; faiss: "
        "Train_default, greedy training, same training vectors\n",
        d.dim, d.source.c_str(), d.dim * 56 / 128, d.dim * 16 / 128);
    PrintHeader();
    if (!RunDim(d, opt, dram_rate)) return 1;
  }
  return 0;
}
