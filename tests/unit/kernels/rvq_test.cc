#include "kernels/rvq.h"

#include <cstring>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/rvq_kernels.h"
#include "tests/unit/kernels/rvq_test_data.h"

namespace vqkv {
namespace {

RvqParams Small(int dim, int stages, int bits) {
  RvqParams p;
  p.dim = dim;
  p.stages = stages;
  p.bits = bits;
  p.training.kmeans_iterations = 6;
  p.seed = 7;
  return p;
}

double RoundTripMse(const ResidualQuantizer& q, const std::vector<float>& x,
                    int beam = 1) {
  const int64_t n = static_cast<int64_t>(x.size()) / q.dim();
  std::vector<uint16_t> codes(n * q.stages());
  std::vector<float> y(x.size());
  EXPECT_TRUE(q.EncodeBeam(x.data(), n, beam, codes.data()).ok());
  EXPECT_TRUE(q.Decode(codes.data(), n, y.data()).ok());
  return RelativeMse(x.data(), y.data(), n, q.dim());
}

TEST(RvqTest, ErrorFallsAsStagesAreAdded) {
  const int dim = 16;
  const std::vector<float> train = testing::KeyLikeVectors(4000, dim, 1);
  const std::vector<float> test = testing::KeyLikeVectors(1000, dim, 2);
  double prev = 1.0;
  for (int stages : {1, 2, 4, 8}) {
    ResidualQuantizer q;
    ASSERT_TRUE(q.Fit(Small(dim, stages, 5), train.data(), 4000).ok());
    const double mse = RoundTripMse(q, test);
    EXPECT_LT(mse, prev) << stages << " stages";
    prev = mse;
  }
  EXPECT_LT(prev, 0.2);
}

TEST(RvqTest, FitIsDeterministicForASeed) {
  const std::vector<float> x = testing::KeyLikeVectors(3000, 8, 3);
  ResidualQuantizer a, b, c;
  ASSERT_TRUE(a.Fit(Small(8, 3, 6), x.data(), 3000).ok());
  ASSERT_TRUE(b.Fit(Small(8, 3, 6), x.data(), 3000).ok());
  RvqParams other = Small(8, 3, 6);
  other.seed = 8;
  ASSERT_TRUE(c.Fit(other, x.data(), 3000).ok());
  ASSERT_EQ(a.codebooks().size(), 3u * 64u * 8u);
  EXPECT_EQ(std::memcmp(a.codebooks().data(), b.codebooks().data(),
                        a.codebooks().size() * sizeof(float)),
            0);
  EXPECT_NE(std::memcmp(a.codebooks().data(), c.codebooks().data(),
                        a.codebooks().size() * sizeof(float)),
            0);
}

TEST(RvqTest, BeamSearchIsNoWorseThanGreedy) {
  const int dim = 16;
  const std::vector<float> train = testing::KeyLikeVectors(4000, dim, 4);
  const std::vector<float> test = testing::KeyLikeVectors(800, dim, 5);
  ResidualQuantizer q;
  ASSERT_TRUE(q.Fit(Small(dim, 6, 5), train.data(), 4000).ok());
  const double greedy = RoundTripMse(q, test, 1);
  const double beam4 = RoundTripMse(q, test, 4);
  const double beam16 = RoundTripMse(q, test, 16);
  EXPECT_LE(beam4, greedy);
  EXPECT_LE(beam16, beam4 * (1 + 1e-9));
  EXPECT_LT(beam16, greedy);  // strictly better on this data
  // Encode() follows params().beam_width.
  std::vector<uint16_t> a(800 * 6), b(800 * 6);
  ASSERT_TRUE(q.EncodeGreedy(test.data(), 800, a.data()).ok());
  ASSERT_TRUE(q.Encode(test.data(), 800, b.data()).ok());
  EXPECT_EQ(a, b);
}

TEST(RvqTest, BatchedAndPerVectorGreedyAgree) {
  // Small batches use the SIMD kernel, large ones sgemm: the same vectors
  // must get the same codes except at near-ties.
  const int dim = 32;
  const std::vector<float> x = testing::KeyLikeVectors(3000, dim, 6);
  ResidualQuantizer q;
  ASSERT_TRUE(q.Fit(Small(dim, 4, 8), x.data(), 3000).ok());
  std::vector<uint16_t> batched(3000 * 4), single(3000 * 4);
  ASSERT_TRUE(q.EncodeGreedy(x.data(), 3000, batched.data()).ok());
  for (int64_t i = 0; i < 3000; i += 8) {
    ASSERT_TRUE(
        q.EncodeGreedy(x.data() + i * dim, 8, single.data() + i * 4).ok());
  }
  int differ = 0;
  for (int64_t i = 0; i < 3000; ++i) {
    differ +=
        std::memcmp(batched.data() + i * 4, single.data() + i * 4, 8) != 0;
  }
  EXPECT_LE(differ, 3);
}

TEST(RvqTest, FromCodebooksDecodesLikeTheOriginal) {
  const std::vector<float> x = testing::KeyLikeVectors(1000, 4, 9);
  ResidualQuantizer q;
  ASSERT_TRUE(q.Fit(Small(4, 2, 4), x.data(), 1000).ok());
  absl::StatusOr<ResidualQuantizer> copy =
      ResidualQuantizer::FromCodebooks(q.params(), q.codebooks());
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->norms(), q.norms());
  EXPECT_EQ(RoundTripMse(*copy, x), RoundTripMse(q, x));
  std::vector<float> short_cb(q.codebooks().begin(), q.codebooks().end() - 1);
  EXPECT_EQ(
      ResidualQuantizer::FromCodebooks(q.params(), short_cb).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(RvqTest, RejectsBadParams) {
  const std::vector<float> x = testing::KeyLikeVectors(100, 4, 1);
  ResidualQuantizer q;
  RvqParams p = Small(4, 1, 2);
  p.stages = 0;
  absl::Status s = q.Fit(p, x.data(), 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("stages"), std::string::npos) << s;
  p = Small(4, 1, 0);
  s = q.Fit(p, x.data(), 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bits"), std::string::npos) << s;
  p = Small(4, 1, 17);
  EXPECT_EQ(q.Fit(p, x.data(), 100).code(), absl::StatusCode::kInvalidArgument);
  p = Small(0, 1, 2);
  s = q.Fit(p, x.data(), 100);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("dim"), std::string::npos) << s;
  // Fewer vectors than codewords.
  EXPECT_EQ(q.Fit(Small(4, 1, 7), x.data(), 100).code(),
            absl::StatusCode::kInvalidArgument);
  // Non-finite training data.
  std::vector<float> bad = x;
  bad[17] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(q.Fit(Small(4, 1, 2), bad.data(), 100).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RvqTest, UnfittedAndOutOfRangeCodes) {
  ResidualQuantizer q;
  std::vector<float> x(8);
  std::vector<uint16_t> codes(2);
  EXPECT_EQ(q.Encode(x.data(), 1, codes.data()).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(q.Decode(codes.data(), 1, x.data()).code(),
            absl::StatusCode::kFailedPrecondition);
  const std::vector<float> train = testing::KeyLikeVectors(100, 8, 1);
  ASSERT_TRUE(q.Fit(Small(8, 2, 3), train.data(), 100).ok());
  codes = {1, 8};  // K = 8
  EXPECT_EQ(q.Decode(codes.data(), 1, x.data()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RvqTest, ProgressReportsEveryStage) {
  const std::vector<float> x = testing::KeyLikeVectors(500, 4, 1);
  std::vector<int64_t> done;
  ResidualQuantizer q;
  ASSERT_TRUE(q.Fit(Small(4, 3, 3), x.data(), 500, [&](const FitProgress& p) {
                 EXPECT_EQ(p.total, 3);
                 done.push_back(p.done);
               }).ok());
  EXPECT_EQ(done, (std::vector<int64_t>{1, 2, 3}));
}

TEST(RvqTest, TrainingSubsetIsUsed) {
  const std::vector<float> x = testing::KeyLikeVectors(5000, 4, 1);
  RvqParams p = Small(4, 2, 4);
  p.training.max_training_points = 300;
  ResidualQuantizer a, b;
  ASSERT_TRUE(a.Fit(p, x.data(), 5000).ok());
  p.training.max_training_points = 0;
  ASSERT_TRUE(b.Fit(p, x.data(), 5000).ok());
  EXPECT_NE(a.codebooks(), b.codebooks());
  EXPECT_LT(RoundTripMse(a, x), 0.5);
}

TEST(RvqTest, TrainingMseMatchesReEncodingWithoutRefinement) {
  // Without refinement the training codes are the greedy codes, so the
  // reported training error equals a greedy re-encode of the training set.
  const std::vector<float> x = testing::KeyLikeVectors(3000, 8, 5);
  ResidualQuantizer q;
  ASSERT_TRUE(q.Fit(Small(8, 4, 5), x.data(), 3000).ok());
  EXPECT_GT(q.training_mse(), 0.0);
  EXPECT_NEAR(q.training_mse(), RoundTripMse(q, x), 1e-4);
}

TEST(RvqTest, RefinementNeverIncreasesTrainingError) {
  const std::vector<float> x = testing::KeyLikeVectors(4000, 8, 6);
  for (int passes : {1, 3}) {
    RvqParams p = Small(8, 4, 6);
    ResidualQuantizer plain, refined;
    ASSERT_TRUE(plain.Fit(p, x.data(), 4000).ok());
    p.training.refine_passes = passes;
    ASSERT_TRUE(refined.Fit(p, x.data(), 4000).ok());
    EXPECT_LE(refined.training_mse(), plain.training_mse() * (1 + 1e-6))
        << passes << " passes";
    EXPECT_NE(refined.codebooks(), plain.codebooks());
  }
}

TEST(RvqTest, RefinementIsDeterministicAndReportsEveryStage) {
  const std::vector<float> x = testing::KeyLikeVectors(2000, 4, 7);
  RvqParams p = Small(4, 3, 4);
  p.training.refine_passes = 2;
  std::vector<int64_t> done;
  ResidualQuantizer a, b;
  ASSERT_TRUE(a.Fit(p, x.data(), 2000, [&](const FitProgress& f) {
                 done.push_back(f.done);
               }).ok());
  ASSERT_TRUE(b.Fit(p, x.data(), 2000).ok());
  EXPECT_EQ(done, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(a.codebooks(), b.codebooks());
}

TEST(RvqTest, BothSeedingsAreDeterministicAndDiffer) {
  const std::vector<float> x = testing::KeyLikeVectors(3000, 8, 8);
  RvqParams p = Small(8, 3, 6);
  ResidualQuantizer shared_a, shared_b, pp_a, pp_b;
  ASSERT_TRUE(shared_a.Fit(p, x.data(), 3000).ok());
  ASSERT_TRUE(shared_b.Fit(p, x.data(), 3000).ok());
  p.training.kmeanspp_seeding = true;
  ASSERT_TRUE(pp_a.Fit(p, x.data(), 3000).ok());
  ASSERT_TRUE(pp_b.Fit(p, x.data(), 3000).ok());
  EXPECT_EQ(shared_a.codebooks(), shared_b.codebooks());
  EXPECT_EQ(pp_a.codebooks(), pp_b.codebooks());
  EXPECT_NE(shared_a.codebooks(), pp_a.codebooks());
  EXPECT_LT(RoundTripMse(pp_a, x), 0.5);
}

TEST(RvqTest, SubsampledKMeansStillAssignsEveryVector) {
  // 8 points per centroid < the 2000 given: k-means runs on a sample, then
  // every vector is assigned; the training error is still that of greedy
  // encoding.
  const std::vector<float> x = testing::KeyLikeVectors(2000, 8, 9);
  RvqParams p = Small(8, 3, 5);
  p.training.max_points_per_centroid = 8;
  ResidualQuantizer q;
  ASSERT_TRUE(q.Fit(p, x.data(), 2000).ok());
  EXPECT_NEAR(q.training_mse(), RoundTripMse(q, x), 1e-4);
  EXPECT_LT(q.training_mse(), 0.5);
}

TEST(RvqTest, RejectsBadRefinePasses) {
  RvqParams p = Small(4, 2, 3);
  p.training.refine_passes = -1;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p.training.refine_passes = 101;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
}

RvqParams SimVq(int dim, int stages, int bits, int iterations) {
  RvqParams p = Small(dim, stages, bits);
  p.training.fit = RvqFit::kSimVq;
  p.training.simvq_iterations = iterations;
  return p;
}

TEST(RvqSimVqTest, IsDeterministicForASeed) {
  const std::vector<float> x = testing::KeyLikeVectors(3000, 8, 31);
  ResidualQuantizer a, b, c, km;
  ASSERT_TRUE(a.Fit(SimVq(8, 3, 6, 4), x.data(), 3000).ok());
  ASSERT_TRUE(b.Fit(SimVq(8, 3, 6, 4), x.data(), 3000).ok());
  RvqParams other = SimVq(8, 3, 6, 4);
  other.seed = 8;
  ASSERT_TRUE(c.Fit(other, x.data(), 3000).ok());
  ASSERT_TRUE(km.Fit(Small(8, 3, 6), x.data(), 3000).ok());
  EXPECT_EQ(a.codebooks(), b.codebooks());
  EXPECT_NE(a.codebooks(), c.codebooks());
  EXPECT_NE(a.codebooks(), km.codebooks());
}

TEST(RvqSimVqTest, NoWorseThanItsInitialisation) {
  // One stage: the training error is the stage's loss, which SimVQ never
  // raises from its basis (the k-means++ or shared seeds, simvq_iterations
  // = 0). Also through a subsample (8 points per centroid < n / K).
  const std::vector<float> x = testing::KeyLikeVectors(4000, 16, 32);
  for (bool kmeanspp : {false, true}) {
    for (int per_centroid : {128, 8}) {
      RvqParams p = SimVq(16, 1, 6, 0);
      p.training.kmeanspp_seeding = kmeanspp;
      p.training.max_points_per_centroid = per_centroid;
      ResidualQuantizer init, fitted;
      ASSERT_TRUE(init.Fit(p, x.data(), 4000).ok());
      p.training.simvq_iterations = 6;
      ASSERT_TRUE(fitted.Fit(p, x.data(), 4000).ok());
      EXPECT_LT(fitted.training_mse(), init.training_mse())
          << "kmeans++ " << kmeanspp << ", " << per_centroid;
      EXPECT_NEAR(fitted.training_mse(), RoundTripMse(fitted, x), 1e-4);
    }
  }
}

TEST(RvqSimVqTest, BeatsTheSeedsAndTracksKMeansOnHeldOutData) {
  const int dim = 16;
  const std::vector<float> train = testing::KeyLikeVectors(6000, dim, 33);
  const std::vector<float> test = testing::KeyLikeVectors(2000, dim, 34);
  ResidualQuantizer seeds, simvq, hybrid, kmeans;
  ASSERT_TRUE(seeds.Fit(SimVq(dim, 4, 6, 0), train.data(), 6000).ok());
  ASSERT_TRUE(simvq.Fit(SimVq(dim, 4, 6, 6), train.data(), 6000).ok());
  RvqParams h = SimVq(dim, 4, 6, 2);
  h.training.simvq_lloyd_iterations = 2;
  ASSERT_TRUE(hybrid.Fit(h, train.data(), 6000).ok());
  RvqParams k = Small(dim, 4, 6);
  k.training.kmeans_iterations = 2;
  ASSERT_TRUE(kmeans.Fit(k, train.data(), 6000).ok());
  const double e_seeds = RoundTripMse(seeds, test);
  const double e_simvq = RoundTripMse(simvq, test);
  const double e_hybrid = RoundTripMse(hybrid, test);
  const double e_kmeans = RoundTripMse(kmeans, test);
  EXPECT_LT(e_simvq, e_seeds);
  // The hybrid ends with the same Lloyd steps as k-means: it should land
  // close to it, not far behind.
  EXPECT_LT(e_hybrid, 1.1 * e_kmeans);
  EXPECT_LT(e_hybrid, e_seeds);
}

TEST(RvqSimVqTest, RejectsBadParams) {
  RvqParams p = SimVq(4, 2, 3, -1);
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p = SimVq(4, 2, 3, 1001);
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p = SimVq(4, 2, 3, 4);
  p.training.simvq_lloyd_iterations = -1;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p = SimVq(4, 2, 3, 4);
  p.training.simvq_ridge = -1e-3;
  absl::Status s = p.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("simvq_ridge"), std::string::npos) << s;
  p.training.simvq_ridge = std::numeric_limits<double>::infinity();
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p = SimVq(4, 2, 3, 4);
  p.training.fit = static_cast<RvqFit>(7);
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RvqSimVqTest, FitNamesRoundTrip) {
  for (RvqFit fit : {RvqFit::kKMeans, RvqFit::kSimVq}) {
    absl::StatusOr<RvqFit> parsed = ParseRvqFit(RvqFitName(fit));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, fit);
  }
  absl::StatusOr<RvqFit> bad = ParseRvqFit("sgd");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("kmeans or simvq"), std::string::npos);
}

}  // namespace
}  // namespace vqkv
