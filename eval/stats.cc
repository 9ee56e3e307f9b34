#include "eval/stats.h"

#include <algorithm>
#include <cmath>

namespace vqkv::eval {
namespace {

constexpr double kZ975 = 1.959963984540054;

}  // namespace

Interval Wilson95(int64_t k, int64_t n) {
  if (n <= 0) return {0.0, 1.0};
  const double nn = static_cast<double>(n);
  const double p = static_cast<double>(k) / nn;
  const double z2 = kZ975 * kZ975;
  const double denom = 1.0 + z2 / nn;
  const double center = (p + z2 / (2.0 * nn)) / denom;
  const double half =
      kZ975 * std::sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn)) / denom;
  // At k = 0 or k = n the bound is exactly 0 or 1; clamp the rounding.
  return {std::clamp(k == 0 ? 0.0 : center - half, 0.0, 1.0),
          std::clamp(k == n ? 1.0 : center + half, 0.0, 1.0)};
}

double StudentT975(int64_t df) {
  static constexpr double kTable[] = {
      0,     12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365,
      2.306, 2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
      2.120, 2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
      2.064, 2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (df < 1) df = 1;
  if (df <= 30) return kTable[df];
  // Cornish-Fisher expansion of t around the normal quantile; its error at
  // df > 30 is below 1e-3.
  const double z = kZ975;
  const double v = static_cast<double>(df);
  const double z3 = z * z * z;
  const double z5 = z3 * z * z;
  return z + (z3 + z) / (4.0 * v) +
         (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * v * v);
}

MeanInterval Mean95(absl::Span<const double> x) {
  MeanInterval r;
  r.n = static_cast<int64_t>(x.size());
  if (r.n == 0) return r;
  double sum = 0.0;
  for (double v : x) sum += v;
  r.mean = sum / static_cast<double>(r.n);
  r.ci95 = {r.mean, r.mean};
  if (r.n < 2) return r;
  double ss = 0.0;
  for (double v : x) ss += (v - r.mean) * (v - r.mean);
  r.sd = std::sqrt(ss / static_cast<double>(r.n - 1));
  const double half =
      StudentT975(r.n - 1) * r.sd / std::sqrt(static_cast<double>(r.n));
  r.ci95 = {r.mean - half, r.mean + half};
  return r;
}

}  // namespace vqkv::eval
