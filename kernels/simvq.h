// SimVQ codebook fit: codewords C = B W, a frozen basis B [k][dim] times a
// learned linear map W [dim][dim] (Zhu et al., "Addressing Representation
// Collapse in Vector Quantized Models with One Linear Layer", the
// reparameterization VQKV trains its codebooks with).
//
// The paper learns W by gradient descent on the reconstruction loss. Here W
// is fitted by alternating minimisation instead, which needs no learning
// rate and is deterministic: assign every point to its nearest codeword of
// B W (sgemm, AssignNearest), then solve the least-squares problem
//   min_W  sum_i ||x_i - b_{a_i} W||^2 + ridge' ||W||^2
// in closed form, W = (B^T N B + ridge' I)^{-1} B^T S, where N = diag(count
// of points per codeword) and S [k][dim] holds the sum of the points
// assigned to each codeword. That is a dim x dim system (dim = 32..128),
// accumulated in one pass and solved by Cholesky. Every codeword moves with
// W, including those no point chose, which is SimVQ's answer to dead
// codewords (k-means moves only assigned centroids).
//
// Layouts: points x float [n][dim], basis and codebook float [k][dim], map
// float [dim][dim], all row-major.
//
// Determinism: for the same inputs the result is bit-identical on the same
// machine and BLAS build (as k-means, kernels/kmeans.h).
//
// Thread safety: a pure function; concurrent calls on disjoint outputs are
// safe.
#ifndef VQKV_KERNELS_SIMVQ_H_
#define VQKV_KERNELS_SIMVQ_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace vqkv {

struct SimVqParams {
  // Alternations of (assign, solve for W). 0 returns the basis itself.
  int iterations = 4;
  // Tikhonov term, relative to the mean diagonal of B^T N B: keeps the
  // system positive definite when the chosen basis rows do not span all
  // dim directions (a few codewords used), at a negligible bias otherwise.
  double ridge = 1e-6;
};

struct SimVqResult {
  std::vector<float> codebook;  // [k][dim] = basis * map
  std::vector<float> map;       // [dim][dim], W
  // loss[t]: mean squared distance of the points to their nearest codeword
  // after t updates of W (loss[0]: the basis, W = I). Non-increasing up to
  // float rounding: each update minimises the loss for the previous
  // assignment, and reassigning to the nearest codeword can only lower it.
  std::vector<double> loss;
  // step_loss[t - 1]: the loss of update t's W under the assignment it was
  // solved for (the closed-form step's own objective), <= loss[t - 1].
  std::vector<double> step_loss;
  // Updates actually applied: fewer than params.iterations when the
  // assignment stopped changing or an update would not lower the loss.
  int iterations = 0;
  // Codewords no point is assigned to, under the final codebook.
  int dead_codewords = 0;
};

// Fits W for the given basis on x. If assign is not null it receives, for
// each point, the index of its nearest final codeword (the assignment that
// loss.back() measures).
// Errors: kInvalidArgument for dim < 1, k < 1, n < 1, iterations < 0,
// a negative or non-finite ridge, or a null basis.
absl::StatusOr<SimVqResult> SimVqFit(const float* x, int64_t n, int dim,
                                     const float* basis, int k,
                                     const SimVqParams& params,
                                     int32_t* assign = nullptr);

}  // namespace vqkv

#endif  // VQKV_KERNELS_SIMVQ_H_
