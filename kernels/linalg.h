// Small dense linear algebra in double for the fits (SimVQ's map, the key
// gains): d <= a few hundred, where hand-written O(d^3) code is noise next
// to the passes over the data, and the project links BLAS but not LAPACK.
//
// Thread safety: pure functions of their arguments.
#ifndef VQKV_KERNELS_LINALG_H_
#define VQKV_KERNELS_LINALG_H_

namespace vqkv {

// Solves A X = B for symmetric positive definite A [d][d] (row-major) and d
// right-hand sides (the columns of B [d][d]): A is overwritten by its
// Cholesky factor, B by X. false (A and B then unspecified) when A is not
// numerically positive definite.
bool CholeskySolve(int d, double* a, double* b);

}  // namespace vqkv

#endif  // VQKV_KERNELS_LINALG_H_
