// Confidence intervals for the small samples the evaluations draw: a
// retrieval accuracy is k successes in n trials, a perplexity comparison is
// one difference per text window. Tables print these next to the point
// estimates so that a reader can tell a real gap from sampling noise.
//
// Thread safety: pure functions.
#ifndef VQKV_EVAL_STATS_H_
#define VQKV_EVAL_STATS_H_

#include <cstdint>

#include "absl/types/span.h"

namespace vqkv::eval {

struct Interval {
  double lo = 0;
  double hi = 0;
};

// The Wilson score interval at 95% (z = 1.959964) for k successes in n
// trials. Unlike the normal (Wald) interval it stays inside [0, 1] and is
// not degenerate at k = 0 or k = n, which is where retrieval scores sit.
// REQUIRES: 0 <= k <= n. n = 0 gives [0, 1] (no information).
Interval Wilson95(int64_t k, int64_t n);

// The two-sided 97.5% quantile of Student's t with `df` degrees of freedom
// (exact table to df 30, a Cornish-Fisher expansion above; within 1e-3).
// REQUIRES: df >= 1.
double StudentT975(int64_t df);

struct MeanInterval {
  double mean = 0;
  Interval ci95;  // mean +- t(n-1) * sd / sqrt(n); equals [mean, mean]
                  // when n < 2 (no spread to estimate)
  double sd = 0;  // sample standard deviation (n - 1 denominator)
  int64_t n = 0;
};

// Mean of `x` with a 95% t interval; the samples are taken as independent
// (e.g. disjoint text windows). Empty `x` gives all zeros.
MeanInterval Mean95(absl::Span<const double> x);

}  // namespace vqkv::eval

#endif  // VQKV_EVAL_STATS_H_
