// RVQ encode problems shaped like fitted KV codebooks, and the check of GPU
// codes against the CPU reference, shared by the CUDA encoder tests (mini_test,
// so they also build on a bare CUDA machine).
#ifndef VQKV_TESTS_UNIT_KERNELS_CUDA_RVQ_TEST_PROBLEM_H_
#define VQKV_TESTS_UNIT_KERNELS_CUDA_RVQ_TEST_PROBLEM_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/rvq_kernels.h"
#include "tests/testing/mini_test.h"

namespace vqkv::cuda {

// Codebooks whose scale shrinks stage by stage, like fitted RVQ codebooks,
// and inputs with per-dimension scales and one outlier dimension, like keys.
struct Problem {
  int dim, K, stages;
  int64_t n;
  std::vector<float> x, codebooks, norms;
};

// Each stage's codewords are `decay` times the previous stage's in scale.
inline Problem MakeProblem(int dim, int K, int stages, int64_t n, uint32_t seed,
                           float decay = 0.75f) {
  Problem p{dim, K, stages, n, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> scale(dim);
  for (int d = 0; d < dim; ++d) scale[d] = 0.5f + 1.5f * (d % 7) / 7.0f;
  scale[dim / 3] = 8.0f;
  p.x.resize(n * dim);
  for (int64_t i = 0; i < n; ++i)
    for (int d = 0; d < dim; ++d) p.x[i * dim + d] = scale[d] * normal(rng);
  p.codebooks.resize(static_cast<size_t>(stages) * K * dim);
  p.norms.resize(static_cast<size_t>(stages) * K);
  float stage_scale = 1.0f;
  for (int s = 0; s < stages; ++s, stage_scale *= decay) {
    for (int k = 0; k < K; ++k) {
      float* c = &p.codebooks[(static_cast<size_t>(s) * K + k) * dim];
      float norm = 0.0f;
      for (int d = 0; d < dim; ++d) {
        c[d] = stage_scale * scale[d] * normal(rng);
        norm += c[d] * c[d];
      }
      p.norms[static_cast<size_t>(s) * K + k] = norm;
    }
  }
  return p;
}

// Checks GPU codes against the CPU reference. Replaying the GPU's own choices
// on the CPU, every stage's pick must be the nearest codeword up to float
// rounding: its score (norms[k] - 2 <r, c_k>, in double) within tol of the
// best. Near-ties may thus resolve differently (and the vector's later
// stages then diverge), but almost every vector must match exactly.
// With many stages a near-tie anywhere changes the rest of a vector's
// codes, so fewer vectors match exactly: `min_identical_percent`. The
// count of identical vectors goes to *identical_out when given. An encoder
// with products of lower precision states its bound per unit of
// ||r|| max ||c||: tol_per_norm widens tol by that.
inline void ExpectCodesMatchReference(const Problem& p,
                                      const std::vector<uint16_t>& gpu,
                                      int min_identical_percent = 98,
                                      int64_t* identical_out = nullptr,
                                      double tol_per_norm = 0.0) {
  std::vector<uint16_t> ref(static_cast<size_t>(p.n) * p.stages);
  cpu::RvqEncodeGreedyRef(p.x.data(), p.n, p.dim, p.codebooks.data(),
                          p.norms.data(), p.stages, p.K, ref.data());
  int64_t identical = 0;
  std::vector<double> r(p.dim);
  for (int64_t i = 0; i < p.n; ++i) {
    const uint16_t* g = &gpu[i * p.stages];
    identical +=
        std::equal(g, g + p.stages, ref.begin() + i * p.stages) ? 1 : 0;
    for (int d = 0; d < p.dim; ++d) r[d] = p.x[i * p.dim + d];
    for (int s = 0; s < p.stages; ++s) {
      ASSERT_LT(g[s], p.K) << "vector " << i << " stage " << s;
      const float* cb = &p.codebooks[static_cast<size_t>(s) * p.K * p.dim];
      const float* nm = &p.norms[static_cast<size_t>(s) * p.K];
      double best = INFINITY, rr = 0, max_norm = 0;
      std::vector<double> score(p.K);
      for (int d = 0; d < p.dim; ++d) rr += r[d] * r[d];
      for (int k = 0; k < p.K; ++k) {
        double dot = 0;
        for (int d = 0; d < p.dim; ++d) dot += r[d] * cb[k * p.dim + d];
        score[k] = nm[k] - 2 * dot;
        best = std::min(best, score[k]);
        max_norm = std::max<double>(max_norm, nm[k]);
      }
      const double tol =
          1e-5 * (rr + max_norm) + tol_per_norm * std::sqrt(rr * max_norm);
      ASSERT_LE(score[g[s]] - best, tol)
          << "vector " << i << " stage " << s << ": GPU chose " << g[s]
          << ", not a near-tie with the nearest codeword";
      for (int d = 0; d < p.dim; ++d) {
        r[d] = static_cast<float>(r[d]) - cb[g[s] * p.dim + d];
      }
    }
  }
  if (identical_out != nullptr) *identical_out = identical;
  EXPECT_GE(identical, p.n * min_identical_percent / 100)
      << "only " << identical << " of " << p.n
      << " vectors got exactly the reference codes";
}

using Shape = std::tuple<int, int, int>;  // dim, K, stages

inline std::string Describe(const Shape& shape) {
  return "dim " + std::to_string(std::get<0>(shape)) + ", K " +
         std::to_string(std::get<1>(shape)) + ", " +
         std::to_string(std::get<2>(shape)) + " stages";
}

}  // namespace vqkv::cuda

#endif  // VQKV_TESTS_UNIT_KERNELS_CUDA_RVQ_TEST_PROBLEM_H_
