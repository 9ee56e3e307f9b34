#include "kernels/linalg.h"

#include <cmath>

namespace vqkv {

bool CholeskySolve(int d, double* a, double* b) {
  for (int j = 0; j < d; ++j) {
    double diag = a[j * d + j];
    for (int p = 0; p < j; ++p) diag -= a[j * d + p] * a[j * d + p];
    if (!(diag > 0) || !std::isfinite(diag)) return false;
    const double l = std::sqrt(diag);
    a[j * d + j] = l;
    for (int i = j + 1; i < d; ++i) {
      double v = a[i * d + j];
      for (int p = 0; p < j; ++p) v -= a[i * d + p] * a[j * d + p];
      a[i * d + j] = v / l;
    }
  }
  // Forward (L Y = B) then backward (L^T X = Y) substitution, all columns
  // of B at once, row by row.
  for (int i = 0; i < d; ++i) {
    double* bi = b + i * d;
    for (int p = 0; p < i; ++p) {
      const double l = a[i * d + p];
      const double* bp = b + p * d;
      for (int q = 0; q < d; ++q) bi[q] -= l * bp[q];
    }
    const double inv = 1.0 / a[i * d + i];
    for (int q = 0; q < d; ++q) bi[q] *= inv;
  }
  for (int i = d - 1; i >= 0; --i) {
    double* bi = b + i * d;
    for (int p = i + 1; p < d; ++p) {
      const double l = a[p * d + i];
      const double* bp = b + p * d;
      for (int q = 0; q < d; ++q) bi[q] -= l * bp[q];
    }
    const double inv = 1.0 / a[i * d + i];
    for (int q = 0; q < d; ++q) bi[q] *= inv;
  }
  return true;
}

}  // namespace vqkv
