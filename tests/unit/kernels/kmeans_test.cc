#include "kernels/kmeans.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/kernels/rvq_test_data.h"

namespace vqkv {
namespace {

TEST(KMeansTest, DeterministicForASeed) {
  const std::vector<float> x = testing::KeyLikeVectors(3000, 16, 1);
  KMeansParams p;
  p.k = 32;
  p.iterations = 5;
  p.seed = 42;
  absl::StatusOr<KMeansResult> a = KMeans(x.data(), 3000, 16, p);
  absl::StatusOr<KMeansResult> b = KMeans(x.data(), 3000, 16, p);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(a->centroids.size(), 32u * 16u);
  EXPECT_EQ(std::memcmp(a->centroids.data(), b->centroids.data(),
                        a->centroids.size() * sizeof(float)),
            0);
  EXPECT_EQ(a->inertia, b->inertia);

  p.seed = 43;
  absl::StatusOr<KMeansResult> c = KMeans(x.data(), 3000, 16, p);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(std::memcmp(a->centroids.data(), c->centroids.data(),
                        a->centroids.size() * sizeof(float)),
            0);
}

TEST(KMeansTest, LloydReducesInertia) {
  const std::vector<float> x = testing::KeyLikeVectors(4000, 8, 2);
  KMeansParams p;
  p.k = 64;
  p.iterations = 10;
  absl::StatusOr<KMeansResult> r = KMeans(x.data(), 4000, 8, p);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->inertia, 0.95 * r->initial_inertia);
  EXPECT_GT(r->inertia, 0);

  p.iterations = 0;
  absl::StatusOr<KMeansResult> seeded = KMeans(x.data(), 4000, 8, p);
  ASSERT_TRUE(seeded.ok());
  EXPECT_EQ(seeded->inertia, seeded->initial_inertia);
}

TEST(KMeansTest, FindsSeparatedClusters) {
  // 8 tight clusters far apart: k-means++ and Lloyd must land one centroid
  // on each, so the inertia equals the within-cluster noise.
  const int dim = 4, k = 8, per = 200;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> noise(0.0f, 0.01f);
  std::vector<float> x;
  for (int c = 0; c < k; ++c) {
    for (int i = 0; i < per; ++i) {
      for (int d = 0; d < dim; ++d) {
        x.push_back(((c >> (d % 3)) & 1 ? 10.0f : -10.0f) * (d + 1) +
                    noise(rng));
      }
    }
  }
  KMeansParams p;
  p.k = k;
  p.iterations = 10;
  absl::StatusOr<KMeansResult> r = KMeans(x.data(), k * per, dim, p);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->inertia, dim * 0.01 * 0.01 * 2);
}

TEST(KMeansTest, SubsamplesLargeInputs) {
  const std::vector<float> x = testing::KeyLikeVectors(5000, 4, 4);
  KMeansParams p;
  p.k = 16;
  p.max_points_per_centroid = 10;
  p.iterations = 2;
  absl::StatusOr<KMeansResult> r = KMeans(x.data(), 5000, 4, p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->training_points, 160);
}

TEST(KMeansTest, HandlesDuplicatePoints) {
  // Fewer distinct points than centroids: empty clusters get re-seeded and
  // nothing divides by zero.
  std::vector<float> x;
  for (int i = 0; i < 100; ++i) {
    x.push_back(float(i % 3));
    x.push_back(float(i % 3) * 2);
  }
  KMeansParams p;
  p.k = 10;
  p.iterations = 4;
  absl::StatusOr<KMeansResult> r = KMeans(x.data(), 100, 2, p);
  ASSERT_TRUE(r.ok()) << r.status();
  for (float v : r->centroids) EXPECT_TRUE(std::isfinite(v));
  EXPECT_LT(r->inertia, 1e-6);
}

TEST(KMeansTest, RejectsBadArguments) {
  const std::vector<float> x(40, 1.0f);
  KMeansParams p;
  p.k = 11;
  EXPECT_EQ(KMeans(x.data(), 10, 4, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  p.k = 2;
  EXPECT_EQ(KMeans(x.data(), 10, 0, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  p.k = 0;
  EXPECT_EQ(KMeans(x.data(), 10, 4, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  p.k = 2;
  p.iterations = -1;
  EXPECT_EQ(KMeans(x.data(), 10, 4, p).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv
