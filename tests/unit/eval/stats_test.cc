// The interval math behind every table of `vqkv eval`: Wilson intervals for
// retrieval accuracy and t intervals over perplexity windows, against
// published values.
#include "eval/stats.h"

#include <vector>

#include "gtest/gtest.h"

namespace vqkv::eval {
namespace {

TEST(Wilson95Test, MatchesKnownValues) {
  struct Case {
    int64_t k, n;
    double lo, hi;
  };
  // Reference values from the closed form (Wilson 1927), computed
  // independently in double precision.
  for (const Case& c :
       {Case{0, 10, 0.0, 0.27753}, Case{10, 10, 0.72247, 1.0},
        Case{5, 10, 0.23659, 0.76341}, Case{20, 20, 0.83887, 1.0},
        Case{1, 20, 0.00888, 0.23613}, Case{15, 20, 0.53130, 0.88814}}) {
    const Interval i = Wilson95(c.k, c.n);
    EXPECT_NEAR(i.lo, c.lo, 1e-5) << c.k << "/" << c.n;
    EXPECT_NEAR(i.hi, c.hi, 1e-5) << c.k << "/" << c.n;
  }
}

TEST(Wilson95Test, StaysInTheUnitIntervalAndHoldsThePoint) {
  for (int64_t n : {1, 2, 7, 20, 1000}) {
    for (int64_t k = 0; k <= n; ++k) {
      const Interval i = Wilson95(k, n);
      const double p = static_cast<double>(k) / static_cast<double>(n);
      EXPECT_GE(i.lo, 0.0);
      EXPECT_LE(i.hi, 1.0);
      EXPECT_LE(i.lo, p);
      EXPECT_GE(i.hi, p);
    }
  }
  const Interval none = Wilson95(0, 0);
  EXPECT_EQ(none.lo, 0.0);
  EXPECT_EQ(none.hi, 1.0);
  // More trials, narrower interval.
  EXPECT_LT(Wilson95(50, 100).hi - Wilson95(50, 100).lo,
            Wilson95(5, 10).hi - Wilson95(5, 10).lo);
}

TEST(StudentT975Test, MatchesTheTable) {
  EXPECT_NEAR(StudentT975(1), 12.706, 1e-3);
  EXPECT_NEAR(StudentT975(4), 2.776, 1e-3);
  EXPECT_NEAR(StudentT975(30), 2.042, 1e-3);
  // Above the table: the expansion.
  EXPECT_NEAR(StudentT975(40), 2.0211, 1e-3);
  EXPECT_NEAR(StudentT975(60), 2.0003, 1e-3);
  EXPECT_NEAR(StudentT975(120), 1.9799, 1e-3);
  EXPECT_NEAR(StudentT975(1000000), 1.95996, 1e-4);
}

TEST(Mean95Test, TIntervalOfASmallSample) {
  const std::vector<double> x = {1, 2, 3, 4, 5};
  const MeanInterval m = Mean95(x);
  EXPECT_EQ(m.n, 5);
  EXPECT_DOUBLE_EQ(m.mean, 3.0);
  EXPECT_NEAR(m.sd, 1.58114, 1e-5);
  // 3 +- 2.776 * 1.58114 / sqrt(5)
  EXPECT_NEAR(m.ci95.lo, 1.03707, 1e-3);
  EXPECT_NEAR(m.ci95.hi, 4.96293, 1e-3);
}

TEST(Mean95Test, DegenerateSamples) {
  const MeanInterval empty = Mean95({});
  EXPECT_EQ(empty.n, 0);
  EXPECT_EQ(empty.mean, 0.0);
  const std::vector<double> one = {0.25};
  const MeanInterval m = Mean95(one);
  EXPECT_EQ(m.n, 1);
  EXPECT_EQ(m.ci95.lo, 0.25);
  EXPECT_EQ(m.ci95.hi, 0.25);
  const std::vector<double> same = {2, 2, 2};
  const MeanInterval s = Mean95(same);
  EXPECT_EQ(s.sd, 0.0);
  EXPECT_EQ(s.ci95.lo, 2.0);
  EXPECT_EQ(s.ci95.hi, 2.0);
}

}  // namespace
}  // namespace vqkv::eval
