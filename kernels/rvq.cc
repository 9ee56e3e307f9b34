#include "kernels/rvq.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/rvq_kernels.h"
#include "kernels/kmeans.h"

namespace vqkv {
namespace {

// Below this many vectors, encoding goes vector by vector through the SIMD
// kernel; above it, batches go through sgemm, which reuses each codebook
// across the batch instead of streaming all codebooks once per vector.
constexpr int64_t kBatchedEncodeMin = 16;

// Codewords per candidate-filter call in beam search: small enough that the
// bound tightens often, large enough to amortise the call.
constexpr int kBeamBlock = 128;

// Rows per sgemm batch when encoding: keeps the dot tile near 4 MiB.
int64_t EncodeChunk(int K, int beam) {
  return std::max<int64_t>(16, (int64_t{1} << 20) / (int64_t{K} * beam));
}

void Subtract(float* r, const float* c, int dim) {
  for (int d = 0; d < dim; ++d) r[d] -= c[d];
}

float SquaredNorm(const float* r, int dim) {
  float s = 0;
  for (int d = 0; d < dim; ++d) s += r[d] * r[d];
  return s;
}

// One stage of the SimVQ fit (RvqFit::kSimVq). The basis is what k-means
// would start from (the current residuals of the shared seed rows, or
// k-means++ with kmeanspp_seeding), so the two fits differ only in the
// update. It is fitted on the stage's k-means sample: res itself when
// order (the sample's row indices) covers all m rows, else the rows gathered
// into *sample_rows. Sets *km like the k-means path does, and *assigned when
// assign [m] already holds every row's nearest final codeword.
absl::Status FitSimVqStage(const RvqParams& params, const KMeansParams& kp,
                           const float* res, int64_t m,
                           const std::vector<int64_t>& seeds,
                           const std::vector<int64_t>& order,
                           std::vector<float>* sample_rows, int32_t* assign,
                           bool* assigned, absl::StatusOr<KMeansResult>* km) {
  const int K = params.K(), dim = params.dim;
  const RvqTraining& t = params.training;
  std::vector<float> basis;
  if (t.kmeanspp_seeding) {
    KMeansParams seeding = kp;
    seeding.iterations = 0;
    absl::StatusOr<KMeansResult> seeded = KMeans(res, m, dim, seeding);
    if (!seeded.ok()) return seeded.status();
    basis = std::move(seeded->centroids);
  } else {
    basis.resize(static_cast<size_t>(K) * dim);
    for (int k = 0; k < K; ++k) {
      std::memcpy(basis.data() + static_cast<size_t>(k) * dim,
                  res + seeds[k] * dim, sizeof(float) * dim);
    }
  }
  const int64_t sample = static_cast<int64_t>(order.size());
  const float* rows = res;
  if (sample < m) {
    for (int64_t i = 0; i < sample; ++i) {
      std::memcpy(sample_rows->data() + i * dim, res + order[i] * dim,
                  sizeof(float) * dim);
    }
    rows = sample_rows->data();
  }
  const bool all_rows = sample == m;
  const bool lloyd = t.simvq_lloyd_iterations > 0;
  absl::StatusOr<SimVqResult> fit = SimVqFit(
      rows, sample, dim, basis.data(), K,
      SimVqParams{.iterations = t.simvq_iterations, .ridge = t.simvq_ridge},
      all_rows && !lloyd ? assign : nullptr);
  if (!fit.ok()) return fit.status();
  if (lloyd) {
    KMeansParams lp = kp;
    lp.iterations = t.simvq_lloyd_iterations;
    *km = KMeansFromCentroids(rows, sample, dim, lp, std::move(fit->codebook),
                              all_rows ? assign : nullptr);
  } else {
    KMeansResult r;
    r.centroids = std::move(fit->codebook);
    r.initial_inertia = fit->loss.front();
    r.inertia = fit->loss.back();
    r.training_points = sample;
    *km = std::move(r);
  }
  *assigned = all_rows;
  return absl::OkStatus();
}

}  // namespace

std::string_view RvqFitName(RvqFit fit) {
  switch (fit) {
    case RvqFit::kKMeans:
      return "kmeans";
    case RvqFit::kSimVq:
      return "simvq";
  }
  return "unknown";
}

absl::StatusOr<RvqFit> ParseRvqFit(std::string_view name) {
  for (RvqFit fit : {RvqFit::kKMeans, RvqFit::kSimVq}) {
    if (name == RvqFitName(fit)) return fit;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown RVQ fit '", std::string(name), "'; expected kmeans or simvq"));
}

absl::Status RvqParams::Validate() const {
  if (dim < 1 || dim > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("RVQ dim must be in 1..65535, got ", dim));
  }
  if (stages < 1 || stages > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("RVQ stages must be in 1..4096, got ", stages));
  }
  if (bits < 1 || bits > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("RVQ bits per stage must be in 1..16, got ", bits));
  }
  const RvqTraining& t = training;
  if (t.kmeans_iterations < 0 || t.max_points_per_centroid < 1 ||
      t.seeding_points_per_centroid < 1 || t.max_training_points < 0 ||
      t.refine_passes < 0 || t.refine_passes > 100) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RVQ training params out of range: kmeans_iterations ",
        t.kmeans_iterations, ", max_points_per_centroid ",
        t.max_points_per_centroid, ", seeding_points_per_centroid ",
        t.seeding_points_per_centroid, ", max_training_points ",
        t.max_training_points, ", refine_passes ", t.refine_passes));
  }
  if (t.fit != RvqFit::kKMeans && t.fit != RvqFit::kSimVq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RVQ fit must be kKMeans or kSimVq, got ", static_cast<int>(t.fit)));
  }
  if (t.simvq_iterations < 0 || t.simvq_iterations > 1000 ||
      t.simvq_lloyd_iterations < 0 || t.simvq_lloyd_iterations > 1000 ||
      !(t.simvq_ridge >= 0) || !std::isfinite(t.simvq_ridge)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RVQ SimVQ params out of range: simvq_iterations ", t.simvq_iterations,
        " (0..1000), simvq_lloyd_iterations ", t.simvq_lloyd_iterations,
        " (0..1000), simvq_ridge ", t.simvq_ridge, " (finite, >= 0)"));
  }
  if (beam_width < 1 || beam_width > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("RVQ beam_width must be in 1..4096, got ", beam_width));
  }
  return absl::OkStatus();
}

absl::StatusOr<ResidualQuantizer> ResidualQuantizer::FromCodebooks(
    const RvqParams& params, std::vector<float> codebooks) {
  if (absl::Status s = params.Validate(); !s.ok()) return s;
  const size_t want =
      static_cast<size_t>(params.stages) * params.K() * params.dim;
  if (codebooks.size() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("RVQ codebooks must hold stages*K*dim = ", want,
                     " floats, got ", codebooks.size()));
  }
  for (float v : codebooks) {
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError("RVQ codebooks contain a non-finite");
    }
  }
  ResidualQuantizer q;
  q.params_ = params;
  q.codebooks_ = std::move(codebooks);
  q.ComputeNorms();
  q.fitted_ = true;
  return q;
}

void ResidualQuantizer::ComputeNorms() {
  const int64_t rows = int64_t{params_.stages} * params_.K();
  norms_.resize(rows);
  for (int64_t i = 0; i < rows; ++i) {
    norms_[i] = SquaredNorm(codebooks_.data() + i * params_.dim, params_.dim);
  }
}

absl::Status ResidualQuantizer::Fit(
    const RvqParams& params, const float* x, int64_t n,
    const std::function<void(const FitProgress&)>& progress) {
  if (absl::Status s = params.Validate(); !s.ok()) return s;
  const int K = params.K();
  const int dim = params.dim;
  if (n < K) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RVQ fit needs at least K = ", K, " training vectors, got ", n));
  }
  for (int64_t i = 0; i < n * dim; ++i) {
    if (!std::isfinite(x[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "RVQ training data has a non-finite value at vector ", i / dim));
    }
  }
  fitted_ = false;
  training_mse_ = 0;
  params_ = params;

  // The training set, as residuals updated in place stage after stage.
  std::mt19937_64 rng(params.seed ^ 0x9e3779b97f4a7c15ULL);
  int64_t m = n;
  if (params.training.max_training_points > 0 &&
      params.training.max_training_points < n) {
    m = std::max<int64_t>(params.training.max_training_points, K);
  }
  std::vector<float> res(static_cast<size_t>(m) * dim);
  if (m == n) {
    std::memcpy(res.data(), x, sizeof(float) * n * dim);
  } else {
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    for (int64_t i = 0; i < m; ++i) {
      std::swap(order[i], order[i + static_cast<int64_t>(rng() % (n - i))]);
    }
    std::sort(order.begin(), order.begin() + m);  // sequential reads
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(res.data() + i * dim, x + order[i] * dim,
                  sizeof(float) * dim);
    }
  }
  // The training rows before any stage, for refinement.
  std::vector<float> train;
  if (params.training.refine_passes > 0) train = res;
  double energy = 0;
  for (int64_t i = 0; i < m * dim; ++i) energy += double{res[i]} * res[i];

  // One random sample of the training rows, shared by every stage: its
  // first K rows seed each stage's codebook, and all of it is the k-means
  // sample (max_points_per_centroid * K rows) of each stage.
  const int64_t sample = std::min<int64_t>(
      m, int64_t{params.training.max_points_per_centroid} * K);
  std::vector<int64_t> order(m);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = 0; i < sample; ++i) {
    std::swap(order[i], order[i + static_cast<int64_t>(rng() % (m - i))]);
  }
  const std::vector<int64_t> seeds(order.begin(), order.begin() + K);
  order.resize(sample);
  std::sort(order.begin(), order.end());  // sequential gathers
  std::vector<float> sample_rows(sample < m ? static_cast<size_t>(sample) * dim
                                            : 0);

  codebooks_.assign(static_cast<size_t>(params.stages) * K * dim, 0.0f);
  norms_.assign(static_cast<size_t>(params.stages) * K, 0.0f);
  std::vector<int32_t> assign(m);
  std::vector<uint16_t> codes(params.training.refine_passes > 0
                                  ? static_cast<size_t>(m) * params.stages
                                  : 0);
  auto report = [&](int done) {
    if (progress) {
      progress(FitProgress{absl::StrCat("rvq stage ", done, "/", params.stages),
                           done, params.stages});
    }
  };
  for (int s = 0; s < params.stages; ++s) {
    KMeansParams kp;
    kp.k = K;
    kp.iterations = params.training.kmeans_iterations;
    kp.max_points_per_centroid = params.training.max_points_per_centroid;
    kp.seeding_points_per_centroid =
        params.training.seeding_points_per_centroid;
    kp.seed = params.seed + 0x100000001b3ULL * static_cast<uint64_t>(s + 1);
    absl::StatusOr<KMeansResult> km;
    bool assigned = false;
    if (params.training.fit == RvqFit::kSimVq) {
      absl::Status fitted =
          FitSimVqStage(params, kp, res.data(), m, seeds, order, &sample_rows,
                        assign.data(), &assigned, &km);
      if (!fitted.ok()) return fitted;
    } else if (params.training.kmeanspp_seeding) {
      km = KMeans(res.data(), m, dim, kp);
    } else {
      std::vector<float> init(static_cast<size_t>(K) * dim);
      for (int k = 0; k < K; ++k) {
        std::memcpy(init.data() + static_cast<size_t>(k) * dim,
                    res.data() + seeds[k] * dim, sizeof(float) * dim);
      }
      if (sample == m) {
        // k-means on every row: its final assignment is the stage's code.
        km = KMeansFromCentroids(res.data(), m, dim, kp, std::move(init),
                                 assign.data());
        assigned = true;
      } else {
        for (int64_t i = 0; i < sample; ++i) {
          std::memcpy(sample_rows.data() + i * dim, res.data() + order[i] * dim,
                      sizeof(float) * dim);
        }
        km = KMeansFromCentroids(sample_rows.data(), sample, dim, kp,
                                 std::move(init));
      }
    }
    if (!km.ok()) return km.status();
    float* cb = codebooks_.data() + static_cast<size_t>(s) * K * dim;
    float* nm = norms_.data() + static_cast<size_t>(s) * K;
    std::memcpy(cb, km->centroids.data(), sizeof(float) * K * dim);
    for (int k = 0; k < K; ++k) nm[k] = SquaredNorm(cb + k * dim, dim);
    if (!assigned) {
      AssignNearest(res.data(), m, dim, cb, nm, K, assign.data(), nullptr);
    }
    for (int64_t i = 0; i < m; ++i) {
      Subtract(res.data() + i * dim, cb + static_cast<size_t>(assign[i]) * dim,
               dim);
    }
    if (!codes.empty()) {
      for (int64_t i = 0; i < m; ++i) {
        codes[i * params.stages + s] = static_cast<uint16_t>(assign[i]);
      }
    }
    // With refinement the last stage is reported once refinement is done.
    if (s + 1 < params.stages || params.training.refine_passes == 0)
      report(s + 1);
  }
  fitted_ = true;
  if (params.training.refine_passes > 0) {
    Refine(train.data(), m, params.training.refine_passes, codes.data(),
           res.data());
  }
  double err = 0;
  for (int64_t i = 0; i < m * dim; ++i) err += double{res[i]} * res[i];
  training_mse_ = energy > 0 ? err / energy : 0;
  if (params.training.refine_passes > 0) report(params.stages);
  return absl::OkStatus();
}

void ResidualQuantizer::Refine(const float* x, int64_t m, int passes,
                               uint16_t* codes, float* res) {
  const int K = params_.K(), dim = params_.dim, stages = params_.stages;
  std::vector<double> sums(static_cast<size_t>(K) * dim);
  std::vector<int64_t> counts(K);
  std::vector<float> old_cb(static_cast<size_t>(K) * dim);
  std::vector<uint16_t> new_codes(static_cast<size_t>(m) * stages);
  std::vector<float> recon(static_cast<size_t>(m) * dim);
  for (int pass = 0; pass < passes; ++pass) {
    // Block coordinate descent over stages: with every other stage fixed,
    // the mean of x - (other stages' codewords) over a codeword's vectors
    // is its least-squares optimum, so no update raises the error.
    for (int s = 0; s < stages; ++s) {
      float* cb = codebooks_.data() + static_cast<size_t>(s) * K * dim;
      std::fill(sums.begin(), sums.end(), 0.0);
      std::fill(counts.begin(), counts.end(), 0);
      for (int64_t i = 0; i < m; ++i) {
        const int k = codes[i * stages + s];
        ++counts[k];
        double* sum = sums.data() + static_cast<size_t>(k) * dim;
        const float* r = res + i * dim;
        const float* c = cb + static_cast<size_t>(k) * dim;
        for (int d = 0; d < dim; ++d) sum[d] += double{r[d]} + c[d];
      }
      std::memcpy(old_cb.data(), cb, sizeof(float) * K * dim);
      for (int k = 0; k < K; ++k) {
        if (counts[k] == 0) continue;  // unused: keep it
        const double inv = 1.0 / static_cast<double>(counts[k]);
        for (int d = 0; d < dim; ++d) {
          cb[static_cast<size_t>(k) * dim + d] =
              static_cast<float>(sums[static_cast<size_t>(k) * dim + d] * inv);
        }
      }
      for (int64_t i = 0; i < m; ++i) {
        const size_t k = codes[i * stages + s];
        float* r = res + i * dim;
        const float* o = old_cb.data() + k * dim;
        const float* c = cb + k * dim;
        for (int d = 0; d < dim; ++d) r[d] += o[d] - c[d];
      }
    }
    ComputeNorms();
    // Re-encode against the refined codebooks; keep a vector's new codes
    // only where they reconstruct it better (greedy is not optimal, so a
    // new code can be worse).
    (void)EncodeGreedy(x, m, new_codes.data());
    cpu::RvqDecode(new_codes.data(), m, stages, codebooks_.data(), K, dim,
                   recon.data());
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * dim;
      const float* yi = recon.data() + i * dim;
      float e = 0;
      for (int d = 0; d < dim; ++d) e += (xi[d] - yi[d]) * (xi[d] - yi[d]);
      if (e < SquaredNorm(res + i * dim, dim)) {
        std::memcpy(codes + i * stages, new_codes.data() + i * stages,
                    sizeof(uint16_t) * stages);
        for (int d = 0; d < dim; ++d) res[i * dim + d] = xi[d] - yi[d];
      }
    }
  }
}

absl::Status ResidualQuantizer::Encode(const float* x, int64_t n,
                                       uint16_t* codes) const {
  if (params_.beam_width > 1) {
    return EncodeBeam(x, n, params_.beam_width, codes);
  }
  return EncodeGreedy(x, n, codes);
}

absl::Status ResidualQuantizer::EncodeGreedy(const float* x, int64_t n,
                                             uint16_t* codes) const {
  if (!fitted_) {
    return absl::FailedPreconditionError("RVQ encode before fit");
  }
  if (n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RVQ encode of a negative count ", n));
  }
  const int K = params_.K(), dim = params_.dim, stages = params_.stages;
  if (n < kBatchedEncodeMin) {
    cpu::RvqEncodeGreedy(x, n, dim, codebooks_.data(), norms_.data(), stages, K,
                         codes);
    return absl::OkStatus();
  }
  const int64_t chunk = std::min(n, EncodeChunk(K, 1));
  std::vector<float> res(static_cast<size_t>(chunk) * dim);
  std::vector<float> dots(static_cast<size_t>(chunk) * K);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t m = std::min(chunk, n - start);
    std::memcpy(res.data(), x + start * dim, sizeof(float) * m * dim);
    for (int s = 0; s < stages; ++s) {
      const float* cb = codebooks_.data() + static_cast<size_t>(s) * K * dim;
      const float* nm = norms_.data() + static_cast<size_t>(s) * K;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                  K, dim, 1.0f, res.data(), dim, cb, dim, 0.0f, dots.data(), K);
      for (int64_t i = 0; i < m; ++i) {
        const int k = cpu::ArgminScore(nm, dots.data() + i * K, K, nullptr);
        codes[(start + i) * stages + s] = static_cast<uint16_t>(k);
        Subtract(res.data() + i * dim, cb + static_cast<size_t>(k) * dim, dim);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ResidualQuantizer::EncodeBeam(const float* x, int64_t n,
                                           int beam_width,
                                           uint16_t* codes) const {
  if (!fitted_) {
    return absl::FailedPreconditionError("RVQ encode before fit");
  }
  if (n < 0 || beam_width < 1 || beam_width > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RVQ beam encode needs n >= 0 and beam_width in 1..4096; got n ", n,
        ", beam_width ", beam_width));
  }
  if (beam_width == 1) return EncodeGreedy(x, n, codes);
  const int K = params_.K(), dim = params_.dim, stages = params_.stages;
  const int B = beam_width;
  const int64_t chunk = std::min<int64_t>(
      std::max<int64_t>(n, 1), std::max<int64_t>(1, EncodeChunk(K, B)));
  const size_t beam_rows = static_cast<size_t>(chunk) * B;
  // Current and next beams: residuals, squared errors and codes so far.
  std::vector<float> res(beam_rows * dim), next_res(beam_rows * dim);
  std::vector<float> err(beam_rows), next_err(beam_rows);
  std::vector<uint16_t> bc(beam_rows * stages), next_bc(beam_rows * stages);
  std::vector<float> dots(beam_rows * K);
  // Top-B candidates of one vector: (score, beam * K + k), a max-heap.
  std::vector<std::pair<float, int64_t>> heap;
  heap.reserve(B + 1);
  std::vector<int32_t> cand_idx(kBeamBlock);
  std::vector<float> cand_score(kBeamBlock);

  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t m = std::min(chunk, n - start);
    int nb = 1;  // live beams per vector
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + (start + i) * dim;
      std::memcpy(res.data() + static_cast<size_t>(i) * B * dim, xi,
                  sizeof(float) * dim);
      err[i * B] = SquaredNorm(xi, dim);
    }
    for (int s = 0; s < stages; ++s) {
      const float* cb = codebooks_.data() + static_cast<size_t>(s) * K * dim;
      const float* nm = norms_.data() + static_cast<size_t>(s) * K;
      // Rows of res are laid out [vector][B][dim]; only the first nb beams of
      // each vector are live, so with nb == B all rows go in one sgemm.
      if (nb == B) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
                    static_cast<int>(m * B), K, dim, 1.0f, res.data(), dim, cb,
                    dim, 0.0f, dots.data(), K);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
                    static_cast<int>(m), K, dim, 1.0f, res.data(), B * dim, cb,
                    dim, 0.0f, dots.data(), B * K);
        for (int b = 1; b < nb; ++b) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
                      static_cast<int>(m), K, dim, 1.0f, res.data() + b * dim,
                      B * dim, cb, dim, 0.0f, dots.data() + b * K, B * K);
        }
      }
      const int next_nb =
          static_cast<int>(std::min<int64_t>(B, int64_t{nb} * K));
      for (int64_t i = 0; i < m; ++i) {
        heap.clear();
        // Score of the worst kept candidate once next_nb are kept: only
        // candidates below it can enter. The vector filter (ScoresBelow)
        // runs on blocks of codewords so the bound tightens as it goes.
        float worst = std::numeric_limits<float>::infinity();
        for (int b = 0; b < nb; ++b) {
          const float e = err[i * B + b];
          const float* d = dots.data() + (static_cast<size_t>(i) * B + b) * K;
          for (int k0 = 0; k0 < K; k0 += kBeamBlock) {
            const int len = std::min(kBeamBlock, K - k0);
            // A little slack: s < worst - e and e + s < worst may round
            // differently; the exact test on (score, id) follows.
            const float limit =
                worst - e + 1e-6f * (std::fabs(worst) + std::fabs(e));
            const int found =
                cpu::ScoresBelow(nm + k0, d + k0, len, limit, cand_idx.data(),
                                 cand_score.data());
            for (int c = 0; c < found; ++c) {
              const float score = e + cand_score[c];
              const int64_t id = int64_t{b} * K + k0 + cand_idx[c];
              if (static_cast<int>(heap.size()) < next_nb) {
                heap.emplace_back(score, id);
                std::push_heap(heap.begin(), heap.end());
              } else if (std::make_pair(score, id) < heap.front()) {
                std::pop_heap(heap.begin(), heap.end());
                heap.back() = {score, id};
                std::push_heap(heap.begin(), heap.end());
              } else {
                continue;
              }
              if (static_cast<int>(heap.size()) == next_nb) {
                worst = heap.front().first;
              }
            }
          }
        }
        std::sort(heap.begin(), heap.end());
        for (int j = 0; j < next_nb; ++j) {
          const int b = static_cast<int>(heap[j].second / K);
          const int k = static_cast<int>(heap[j].second % K);
          const size_t src = static_cast<size_t>(i) * B + b;
          const size_t dst = static_cast<size_t>(i) * B + j;
          float* r = next_res.data() + dst * dim;
          std::memcpy(r, res.data() + src * dim, sizeof(float) * dim);
          Subtract(r, cb + static_cast<size_t>(k) * dim, dim);
          // Exact error of the new residual, so rounding does not drift.
          next_err[dst] = SquaredNorm(r, dim);
          std::memcpy(next_bc.data() + dst * stages, bc.data() + src * stages,
                      sizeof(uint16_t) * s);
          next_bc[dst * stages + s] = static_cast<uint16_t>(k);
        }
      }
      std::swap(res, next_res);
      std::swap(err, next_err);
      std::swap(bc, next_bc);
      nb = next_nb;
    }
    for (int64_t i = 0; i < m; ++i) {
      int best = 0;
      for (int b = 1; b < nb; ++b) {
        if (err[i * B + b] < err[i * B + best]) best = b;
      }
      std::memcpy(codes + (start + i) * stages,
                  bc.data() + (static_cast<size_t>(i) * B + best) * stages,
                  sizeof(uint16_t) * stages);
    }
  }
  return absl::OkStatus();
}

absl::Status ResidualQuantizer::Decode(const uint16_t* codes, int64_t n,
                                       float* out) const {
  if (!fitted_) {
    return absl::FailedPreconditionError("RVQ decode before fit");
  }
  if (n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RVQ decode of a negative count ", n));
  }
  const int K = params_.K();
  const int64_t total = n * params_.stages;
  for (int64_t i = 0; i < total; ++i) {
    if (codes[i] >= K) {
      return absl::InvalidArgumentError(
          absl::StrCat("RVQ code ", codes[i], " out of range for K = ", K,
                       " (vector ", i / params_.stages, ")"));
    }
  }
  cpu::RvqDecode(codes, n, params_.stages, codebooks_.data(), K, params_.dim,
                 out);
  return absl::OkStatus();
}

double RelativeMse(const float* x, const float* y, int64_t n, int dim) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n * dim; ++i) {
    const double d = static_cast<double>(x[i]) - y[i];
    num += d * d;
    den += static_cast<double>(x[i]) * x[i];
  }
  return den > 0 ? num / den
                 : (num > 0 ? std::numeric_limits<double>::infinity() : 0.0);
}

}  // namespace vqkv
