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

TEST(KMeansTest, EmptyClustersSplitClustersOfSeveralPoints) {
  // Two singletons (at 0 and 10) and 98 points spread around 100, with
  // three seeds far away that no point picks: each empty cluster takes half
  // of a cluster of several points, never a singleton, so both singletons
  // keep their own exact centroid.
  std::vector<float> x = {0.0f, 10.0f};
  for (int i = 0; i < 98; ++i) x.push_back(100.0f + 0.01f * (i - 49));
  KMeansParams p;
  p.k = 6;
  p.iterations = 1;
  const std::vector<float> init = {0.0f, 10.0f, 100.0f, 1e6f, 2e6f, 3e6f};
  absl::StatusOr<KMeansResult> r =
      KMeansFromCentroids(x.data(), 100, 1, p, init, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->centroids[0], 0.0f);
  EXPECT_EQ(r->centroids[1], 10.0f);
  for (int j = 2; j < 6; ++j) EXPECT_NEAR(r->centroids[j], 100.0f, 0.5f) << j;
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

TEST(KMeansTest, FromCentroidsReturnsTheFinalAssignment) {
  const std::vector<float> x = testing::KeyLikeVectors(2000, 8, 5);
  KMeansParams p;
  p.k = 16;
  p.iterations = 3;
  std::vector<float> init(x.begin(), x.begin() + 16 * 8);
  std::vector<int32_t> assign(2000, -1);
  absl::StatusOr<KMeansResult> r =
      KMeansFromCentroids(x.data(), 2000, 8, p, init, assign.data());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->training_points, 2000);
  EXPECT_LT(r->inertia, r->initial_inertia);
  // The returned assignment is the nearest-centroid assignment of the
  // returned centroids, and the inertia is its mean squared distance.
  std::vector<float> norms(16);
  for (int j = 0; j < 16; ++j) {
    float s = 0;
    for (int d = 0; d < 8; ++d) {
      s += r->centroids[j * 8 + d] * r->centroids[j * 8 + d];
    }
    norms[j] = s;
  }
  std::vector<int32_t> again(2000);
  std::vector<float> dist(2000);
  AssignNearest(x.data(), 2000, 8, r->centroids.data(), norms.data(), 16,
                again.data(), dist.data());
  EXPECT_EQ(assign, again);
  double sum = 0;
  for (float d : dist) sum += d;
  EXPECT_NEAR(r->inertia, sum / 2000, 1e-3 * r->inertia);

  p.iterations = 0;
  absl::StatusOr<KMeansResult> same =
      KMeansFromCentroids(x.data(), 2000, 8, p, init, nullptr);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->centroids, init);
}

TEST(KMeansTest, FromCentroidsRejectsBadInput) {
  const std::vector<float> x = testing::KeyLikeVectors(100, 4, 1);
  KMeansParams p;
  p.k = 8;
  EXPECT_EQ(KMeansFromCentroids(x.data(), 100, 4, p, std::vector<float>(31))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KMeansFromCentroids(x.data(), 0, 4, p, std::vector<float>(32))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  p.iterations = -1;
  EXPECT_EQ(KMeansFromCentroids(x.data(), 100, 4, p, std::vector<float>(32))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv
