#include "kernels/simvq.h"

#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/kmeans.h"
#include "tests/unit/kernels/rvq_test_data.h"

namespace vqkv {
namespace {

// The first k rows of x: the seeds a stage of the RVQ fit starts from.
std::vector<float> FirstRows(const std::vector<float>& x, int k, int dim) {
  return std::vector<float>(x.begin(),
                            x.begin() + static_cast<size_t>(k) * dim);
}

TEST(SimVqTest, LossNeverRisesAndEndsBelowTheBasis) {
  const int dim = 16, k = 64;
  const int64_t n = 4000;
  const std::vector<float> x = testing::KeyLikeVectors(n, dim, 21);
  // A poor basis (scaled-down seeds), so the map has something to fix.
  std::vector<float> basis = FirstRows(x, k, dim);
  for (float& v : basis) v *= 0.3f;
  absl::StatusOr<SimVqResult> r =
      SimVqFit(x.data(), n, dim, basis.data(), k, SimVqParams{.iterations = 6});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_GE(r->iterations, 1);
  ASSERT_EQ(r->loss.size(), static_cast<size_t>(r->iterations) + 1);
  ASSERT_EQ(r->step_loss.size(), static_cast<size_t>(r->iterations));
  for (int t = 1; t <= r->iterations; ++t) {
    // The closed-form step never raises the loss for its fixed assignment,
    // and reassigning to the nearest codeword never raises it either.
    EXPECT_LE(r->step_loss[t - 1], r->loss[t - 1] * (1 + 1e-5)) << t;
    EXPECT_LE(r->loss[t], r->step_loss[t - 1] * (1 + 1e-5)) << t;
  }
  EXPECT_LT(r->loss.back(), 0.9 * r->loss.front());
}

TEST(SimVqTest, RecoversALinearMapOfTheBasis) {
  // Points sit near the codewords of B M for a random M: SimVQ started from
  // B must find a map close to M, i.e. a loss near the noise floor.
  const int dim = 8, k = 32;
  const int64_t n = 3000;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> basis(static_cast<size_t>(k) * dim), m(dim * dim);
  for (float& v : basis) v = normal(rng);
  for (int p = 0; p < dim; ++p) {
    for (int q = 0; q < dim; ++q) {
      m[p * dim + q] = (p == q ? 1.3f : 0.0f) + 0.25f * normal(rng);
    }
  }
  std::vector<float> x(static_cast<size_t>(n) * dim);
  const float noise = 0.01f;
  for (int64_t i = 0; i < n; ++i) {
    const float* b = basis.data() + (i % k) * dim;
    for (int q = 0; q < dim; ++q) {
      float v = 0;
      for (int p = 0; p < dim; ++p) v += b[p] * m[p * dim + q];
      x[i * dim + q] = v + noise * normal(rng);
    }
  }
  absl::StatusOr<SimVqResult> r = SimVqFit(x.data(), n, dim, basis.data(), k,
                                           SimVqParams{.iterations = 20});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->loss.back(), 4 * dim * noise * noise);
  EXPECT_GT(r->loss.front(), 100 * r->loss.back());
  for (int i = 0; i < dim * dim; ++i) EXPECT_NEAR(r->map[i], m[i], 0.05f) << i;
  EXPECT_EQ(r->dead_codewords, 0);
}

TEST(SimVqTest, IsDeterministicAndReportsTheFinalAssignment) {
  const int dim = 8, k = 32;
  const int64_t n = 2000;
  const std::vector<float> x = testing::KeyLikeVectors(n, dim, 22);
  const std::vector<float> basis = FirstRows(x, k, dim);
  std::vector<int32_t> assign_a(n), assign_b(n), nearest(n);
  absl::StatusOr<SimVqResult> a = SimVqFit(x.data(), n, dim, basis.data(), k,
                                           SimVqParams{}, assign_a.data());
  absl::StatusOr<SimVqResult> b = SimVqFit(x.data(), n, dim, basis.data(), k,
                                           SimVqParams{}, assign_b.data());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->codebook, b->codebook);
  EXPECT_EQ(a->map, b->map);
  EXPECT_EQ(assign_a, assign_b);
  std::vector<float> norms(k);
  for (int j = 0; j < k; ++j) {
    for (int d = 0; d < dim; ++d) {
      norms[j] += a->codebook[j * dim + d] * a->codebook[j * dim + d];
    }
  }
  AssignNearest(x.data(), n, dim, a->codebook.data(), norms.data(), k,
                nearest.data(), nullptr);
  EXPECT_EQ(assign_a, nearest);
}

TEST(SimVqTest, ZeroIterationsReturnsTheBasis) {
  const int dim = 4, k = 8;
  const std::vector<float> x = testing::KeyLikeVectors(100, dim, 23);
  const std::vector<float> basis = FirstRows(x, k, dim);
  absl::StatusOr<SimVqResult> r = SimVqFit(x.data(), 100, dim, basis.data(), k,
                                           SimVqParams{.iterations = 0});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->codebook, basis);
  EXPECT_EQ(r->iterations, 0);
  EXPECT_EQ(r->loss.size(), 1u);
}

TEST(SimVqTest, DegenerateBasisKeepsTheIdentityMap) {
  // Every basis row is zero: no map can help; the fit stops cleanly.
  const int dim = 4, k = 8;
  const std::vector<float> x = testing::KeyLikeVectors(200, dim, 24);
  const std::vector<float> basis(static_cast<size_t>(k) * dim, 0.0f);
  absl::StatusOr<SimVqResult> r =
      SimVqFit(x.data(), 200, dim, basis.data(), k, SimVqParams{.ridge = 0});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->iterations, 0);
  EXPECT_EQ(r->codebook, basis);
}

TEST(SimVqTest, RejectsBadParams) {
  const std::vector<float> x = testing::KeyLikeVectors(100, 4, 25);
  const std::vector<float> basis = FirstRows(x, 8, 4);
  EXPECT_EQ(
      SimVqFit(x.data(), 100, 4, basis.data(), 8, SimVqParams{.iterations = -1})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      SimVqFit(x.data(), 100, 4, basis.data(), 8, SimVqParams{.ridge = -1})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      SimVqFit(x.data(), 0, 4, basis.data(), 8, SimVqParams{}).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      SimVqFit(x.data(), 100, 4, nullptr, 8, SimVqParams{}).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv
