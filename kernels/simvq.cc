#include "kernels/simvq.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/kmeans.h"
#include "kernels/linalg.h"

namespace vqkv {

absl::StatusOr<SimVqResult> SimVqFit(const float* x, int64_t n, int dim,
                                     const float* basis, int k,
                                     const SimVqParams& params,
                                     int32_t* assign) {
  if (dim < 1 || k < 1 || n < 1 || params.iterations < 0 ||
      !(params.ridge >= 0) || !std::isfinite(params.ridge) ||
      basis == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SimVQ needs dim >= 1, k >= 1, n >= 1, iterations >= 0, a finite "
        "ridge >= 0 and a basis; got dim ",
        dim, ", k ", k, ", n ", n, ", iterations ", params.iterations,
        ", ridge ", params.ridge));
  }
  const size_t kd = static_cast<size_t>(k) * dim;
  const size_t dd = static_cast<size_t>(dim) * dim;
  SimVqResult r;
  r.codebook.assign(basis, basis + kd);

  std::vector<int32_t> own_assign(assign == nullptr ? n : 0);
  int32_t* a = assign != nullptr ? assign : own_assign.data();
  std::vector<float> dist(n), norms(k);
  auto assign_all = [&]() {
    for (int j = 0; j < k; ++j) {
      const float* c = r.codebook.data() + static_cast<size_t>(j) * dim;
      float s = 0;
      for (int d = 0; d < dim; ++d) s += c[d] * c[d];
      norms[j] = s;
    }
    AssignNearest(x, n, dim, r.codebook.data(), norms.data(), k, a,
                  dist.data());
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += dist[i];
    return sum / static_cast<double>(n);
  };
  r.loss.push_back(assign_all());

  std::vector<double> w(dd, 0.0);  // W = I: the codebook is the basis
  for (int d = 0; d < dim; ++d) w[static_cast<size_t>(d) * dim + d] = 1.0;
  double sum_x2 = 0;
  for (int64_t i = 0; i < n * dim; ++i) sum_x2 += double{x[i]} * x[i];

  std::vector<double> sums(params.iterations > 0 ? kd : 0);
  std::vector<int64_t> counts(k);
  std::vector<double> gram(dd), cross(dd), factor(dd), w_new(dd), gw(dd);
  std::vector<int32_t> prev(params.iterations > 0 ? n : 0);
  std::vector<double> basis_d(params.iterations > 0 ? kd : 0);
  std::vector<double> scaled(params.iterations > 0 ? kd : 0);
  for (size_t i = 0; i < basis_d.size(); ++i) basis_d[i] = basis[i];
  // The loss of map m under the current assignment, from the accumulated
  // statistics: (sum ||x||^2 - 2 tr(m^T X) + tr(m^T G m)) / n.
  auto objective = [&](const std::vector<double>& m) {
    std::fill(gw.begin(), gw.end(), 0.0);
    for (int p = 0; p < dim; ++p) {
      for (int s = 0; s < dim; ++s) {
        const double g = gram[static_cast<size_t>(p) * dim + s];
        const double* ms = m.data() + static_cast<size_t>(s) * dim;
        double* out = gw.data() + static_cast<size_t>(p) * dim;
        for (int q = 0; q < dim; ++q) out[q] += g * ms[q];
      }
    }
    double lin = 0, quad = 0;
    for (size_t i = 0; i < dd; ++i) {
      lin += m[i] * cross[i];
      quad += m[i] * gw[i];
    }
    return (sum_x2 - 2 * lin + quad) / static_cast<double>(n);
  };

  for (int t = 0; t < params.iterations; ++t) {
    // Per-codeword counts and sums of the assigned points: all the solve
    // needs, so the d x d statistics cost O(k d^2), not O(n d^2).
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t i = 0; i < n; ++i) {
      ++counts[a[i]];
      double* s = sums.data() + static_cast<size_t>(a[i]) * dim;
      const float* p = x + i * dim;
      for (int d = 0; d < dim; ++d) s[d] += p[d];
    }
    // G = B^T N B, X = B^T S: two dgemms over the K basis rows (scalar
    // loops here cost as much as the assignment pass at D = 32).
    for (int j = 0; j < k; ++j) {
      const double c = static_cast<double>(counts[j]);
      const double* b = basis_d.data() + static_cast<size_t>(j) * dim;
      double* nb = scaled.data() + static_cast<size_t>(j) * dim;
      for (int d = 0; d < dim; ++d) nb[d] = c * b[d];
    }
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, dim, dim, k, 1.0,
                basis_d.data(), dim, scaled.data(), dim, 0.0, gram.data(), dim);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, dim, dim, k, 1.0,
                basis_d.data(), dim, sums.data(), dim, 0.0, cross.data(), dim);
    double trace = 0;
    for (int d = 0; d < dim; ++d)
      trace += gram[static_cast<size_t>(d) * dim + d];
    if (!(trace > 0)) break;  // only zero basis rows are used: W is moot
    factor = gram;
    const double lambda = params.ridge * trace / dim;
    for (int d = 0; d < dim; ++d)
      factor[static_cast<size_t>(d) * dim + d] += lambda;
    w_new = cross;
    if (!CholeskySolve(dim, factor.data(), w_new.data())) break;
    // The ridge term and rounding can make the solution slightly worse than
    // the current map for the unregularised loss; then W has converged and
    // is kept, so the loss never rises.
    const double before = objective(w);
    const double after = objective(w_new);
    if (!(after < before)) break;
    w.swap(w_new);
    r.step_loss.push_back(after);
    ++r.iterations;

    // Materialise C = B W (in double) and reassign.
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, dim, dim, 1.0,
                basis_d.data(), dim, w.data(), dim, 0.0, scaled.data(), dim);
    for (size_t i = 0; i < kd; ++i) {
      r.codebook[i] = static_cast<float>(scaled[i]);
    }
    std::memcpy(prev.data(), a, sizeof(int32_t) * n);
    r.loss.push_back(assign_all());
    // Same assignment, same statistics, same W: nothing left to gain.
    if (std::equal(prev.begin(), prev.end(), a)) break;
  }

  r.map.resize(dd);
  for (size_t i = 0; i < dd; ++i) r.map[i] = static_cast<float>(w[i]);
  std::vector<char> used(k, 0);
  for (int64_t i = 0; i < n; ++i) used[a[i]] = 1;
  r.dead_codewords =
      static_cast<int>(std::count(used.begin(), used.end(), char{0}));
  return r;
}

}  // namespace vqkv
