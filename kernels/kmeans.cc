#include "kernels/kmeans.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/rvq_kernels.h"

namespace vqkv {
namespace {

// Squared norms of n rows of dim floats (double accumulation: these are
// added to sgemm dot products, so their own rounding should be small).
void RowNorms(const float* x, int64_t n, int dim, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* r = x + i * dim;
    float s = 0;
    for (int d = 0; d < dim; ++d) s += r[d] * r[d];
    out[i] = s;
  }
}

// Uniform integer in [0, bound) from a 64-bit engine; explicit so results do
// not depend on the standard library's distribution implementation.
uint64_t Below(std::mt19937_64& rng, uint64_t bound) { return rng() % bound; }

double Uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// Mean squared distance of n points to their nearest centroid.
double Inertia(const float* x, int64_t n, int dim, const float* c, int k,
               int32_t* assign, float* dist) {
  std::vector<float> c_norms(k);
  RowNorms(c, k, dim, c_norms.data());
  AssignNearest(x, n, dim, c, c_norms.data(), k, assign, dist);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += dist[i];
  return sum / static_cast<double>(n);
}

// k-means++ seeding on s points (already in random order).
void SeedPlusPlus(const float* p, int64_t s, int dim, int k,
                  std::mt19937_64& rng, float* centroids) {
  std::vector<float> p_norms(s);
  RowNorms(p, s, dim, p_norms.data());
  std::vector<float> d2(s, std::numeric_limits<float>::infinity());
  std::vector<float> dots(s);
  int64_t pick = static_cast<int64_t>(Below(rng, s));
  for (int j = 0; j < k; ++j) {
    const float* c = p + pick * dim;
    std::memcpy(centroids + static_cast<size_t>(j) * dim, c,
                sizeof(float) * dim);
    if (j + 1 == k) break;
    const float c_norm = p_norms[pick];
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(s), dim, 1.0f, p,
                dim, c, 1, 0.0f, dots.data(), 1);
    double total = 0;
    for (int64_t i = 0; i < s; ++i) {
      const float d = std::max(0.0f, p_norms[i] - 2.0f * dots[i] + c_norm);
      d2[i] = std::min(d2[i], d);
      total += d2[i];
    }
    if (!(total > 0)) {
      // Every point coincides with a centroid: any point will do.
      pick = static_cast<int64_t>(Below(rng, s));
      continue;
    }
    const double target = Uniform01(rng) * total;
    double acc = 0;
    pick = s - 1;
    for (int64_t i = 0; i < s; ++i) {
      acc += d2[i];
      if (acc > target && d2[i] > 0) {
        pick = i;
        break;
      }
    }
  }
}

constexpr uint64_t kSplitSeed = 1234;

// The cluster an empty one takes half of. Clusters are scanned from index 0,
// round and round, each taken with probability (size - 1) / (n - k), by a
// generator restarted from the same seed at every round of splits: faiss's
// rule. Measured on codec_bench's D=128 keys (56 x 1024 codewords, 20
// training vectors per codeword, seeds 11 and 22; docs/CODEC.md): held-out
// error 0.00240 / 0.00250 when the largest cluster is always split, 0.00226
// / 0.00237 with an exact size-proportional draw, 0.00221 / 0.00232 with
// this rule (faiss 0.00219 / 0.00225). Splitting one cluster over and over
// leaves near-identical codewords that mostly empty again; why the scan's
// preference for low indices, the same ones at every stage, helps further
// is not known (with shared seeding, codeword i of every stage starts from
// the same training row).
int ClusterToSplit(const std::vector<int64_t>& counts, int64_t n,
                   std::mt19937_64& rng) {
  const int k = static_cast<int>(counts.size());
  int64_t spare = 0;  // points beyond one per cluster
  for (int64_t c : counts) spare += std::max<int64_t>(c - 1, 0);
  if (spare <= 0 || n <= k) {
    return static_cast<int>(std::max_element(counts.begin(), counts.end()) -
                            counts.begin());
  }
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const double scale = 1.0 / static_cast<double>(n - k);
  for (int j = 0;; j = (j + 1) % k) {
    if (uniform(rng) < static_cast<double>(counts[j] - 1) * scale) return j;
  }
}

// Lloyd iterations on c [k][dim] over all n points; fills the inertia
// fields of result and, if assign_out is not null, the final assignment.
void Lloyd(const float* x, int64_t n, int dim, int k, int iterations, float* c,
           int32_t* assign_out, KMeansResult* result) {
  std::vector<int32_t> own_assign(assign_out == nullptr ? n : 0);
  int32_t* assign = assign_out != nullptr ? assign_out : own_assign.data();
  std::vector<float> dist(n);
  std::vector<double> sums(static_cast<size_t>(k) * dim);
  std::vector<int64_t> counts(k);
  result->initial_inertia = Inertia(x, n, dim, c, k, assign, dist.data());
  result->inertia = result->initial_inertia;
  for (int it = 0; it < iterations; ++it) {
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t i = 0; i < n; ++i) {
      const int a = assign[i];
      ++counts[a];
      double* sum = sums.data() + static_cast<size_t>(a) * dim;
      const float* p = x + i * dim;
      for (int d = 0; d < dim; ++d) sum[d] += p[d];
    }
    for (int j = 0; j < k; ++j) {
      if (counts[j] == 0) continue;
      const double inv = 1.0 / static_cast<double>(counts[j]);
      for (int d = 0; d < dim; ++d) {
        c[static_cast<size_t>(j) * dim + d] =
            static_cast<float>(sums[static_cast<size_t>(j) * dim + d] * inv);
      }
    }
    // Empty clusters: split a cluster ClusterToSplit picks in two by nudging
    // its centroid apart along a fixed +-eps pattern (deterministic).
    std::mt19937_64 split_rng(kSplitSeed);
    for (int j = 0; j < k; ++j) {
      if (counts[j] != 0) continue;
      const int big = ClusterToSplit(counts, n, split_rng);
      float* cb = c + static_cast<size_t>(big) * dim;
      float* cj = c + static_cast<size_t>(j) * dim;
      constexpr float kEps = 1.0f / 1024;
      for (int d = 0; d < dim; ++d) {
        const float delta =
            (d % 2 == 0 ? kEps : -kEps) * std::max(std::fabs(cb[d]), 1e-6f);
        cj[d] = cb[d] + delta;
        cb[d] = cb[d] - delta;
      }
      counts[j] = counts[big] / 2;
      counts[big] -= counts[j];
    }
    result->inertia = Inertia(x, n, dim, c, k, assign, dist.data());
  }
}

}  // namespace

void AssignNearest(const float* x, int64_t n, int dim, const float* c,
                   const float* c_norms, int k, int32_t* assign, float* dist) {
  // Chunk rows so the dot-product tile stays around 4 MiB.
  const int64_t tile = int64_t{1} << 20;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n, tile / k));
  std::vector<float> dots(static_cast<size_t>(chunk) * k);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t m = std::min(chunk, n - start);
    const float* xs = x + start * dim;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), k,
                dim, 1.0f, xs, dim, c, dim, 0.0f, dots.data(), k);
    for (int64_t i = 0; i < m; ++i) {
      float best = 0;
      assign[start + i] = cpu::ArgminScore(
          c_norms, dots.data() + static_cast<size_t>(i) * k, k, &best);
      if (dist != nullptr) {
        const float* r = xs + i * dim;
        float xn = 0;
        for (int d = 0; d < dim; ++d) xn += r[d] * r[d];
        dist[start + i] = std::max(0.0f, xn + best);
      }
    }
  }
}

absl::StatusOr<KMeansResult> KMeans(const float* x, int64_t n, int dim,
                                    const KMeansParams& params) {
  const int k = params.k;
  if (dim < 1 || k < 1 || params.iterations < 0 ||
      params.max_points_per_centroid < 1 ||
      params.seeding_points_per_centroid < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "k-means needs dim >= 1, k >= 1, iterations >= 0 and positive "
        "per-centroid limits; got dim ",
        dim, ", k ", k, ", iterations ", params.iterations,
        ", max_points_per_centroid ", params.max_points_per_centroid,
        ", seeding_points_per_centroid ", params.seeding_points_per_centroid));
  }
  if (n < k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "k-means needs at least k points: got ", n, " points for k = ", k));
  }
  std::mt19937_64 rng(params.seed);

  // A random order of the points: its prefix is the training subsample and
  // a shorter prefix the seeding subsample.
  const int64_t m =
      std::min<int64_t>(n, int64_t{params.max_points_per_centroid} * k);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t j = i + static_cast<int64_t>(Below(rng, n - i));
    std::swap(order[i], order[j]);
  }
  std::vector<float> train(static_cast<size_t>(m) * dim);
  for (int64_t i = 0; i < m; ++i) {
    std::memcpy(train.data() + i * dim, x + order[i] * dim,
                sizeof(float) * dim);
  }
  order.clear();
  order.shrink_to_fit();

  KMeansResult result;
  result.training_points = m;
  result.centroids.assign(static_cast<size_t>(k) * dim, 0.0f);
  float* c = result.centroids.data();
  const int64_t s =
      std::min<int64_t>(m, int64_t{params.seeding_points_per_centroid} * k);
  SeedPlusPlus(train.data(), s, dim, k, rng, c);

  Lloyd(train.data(), m, dim, k, params.iterations, c, nullptr, &result);
  return result;
}

absl::StatusOr<KMeansResult> KMeansFromCentroids(
    const float* x, int64_t n, int dim, const KMeansParams& params,
    std::vector<float> initial_centroids, int32_t* assign) {
  const int k = params.k;
  if (dim < 1 || k < 1 || n < 1 || params.iterations < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "k-means needs dim >= 1, k >= 1, n >= 1 and iterations >= 0; got dim ",
        dim, ", k ", k, ", n ", n, ", iterations ", params.iterations));
  }
  if (initial_centroids.size() != static_cast<size_t>(k) * dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("k-means initial centroids must hold k * dim = ",
                     static_cast<size_t>(k) * dim, " floats, got ",
                     initial_centroids.size()));
  }
  KMeansResult result;
  result.training_points = n;
  result.centroids = std::move(initial_centroids);
  Lloyd(x, n, dim, k, params.iterations, result.centroids.data(), assign,
        &result);
  return result;
}

}  // namespace vqkv
