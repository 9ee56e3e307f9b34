// k-means clustering for codebook training: k-means++ seeding on a bounded
// subsample, then Lloyd iterations with distances computed as one matrix
// product per iteration (OpenBLAS sgemm): ||x||^2 - 2 X C^T + ||c||^2.
//
// Layouts: points x float [n][dim], centroids float [k][dim], row-major.
//
// Determinism: for the same inputs, params and seed the result is
// bit-identical on the same machine and BLAS build (sgemm's summation order
// may differ between BLAS builds or CPU types).
//
// Thread safety: pure functions; concurrent calls on disjoint outputs are
// safe.
#ifndef VQKV_KERNELS_KMEANS_H_
#define VQKV_KERNELS_KMEANS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace vqkv {

// The project's k-means defaults; RvqTraining (kernels/rvq.h) takes its
// defaults from here, so codec training and plain k-means agree.
struct KMeansParams {
  int k = 256;         // number of centroids, >= 1
  int iterations = 2;  // Lloyd iterations after seeding, >= 0
  // Train on a random subsample of at most max_points_per_centroid * k
  // points; more points barely move the centroids but cost linear time.
  int max_points_per_centroid = 128;
  // k-means++ seeding runs on at most seeding_points_per_centroid * k
  // points, so seeding stays O(k^2 * dim * this) even for k = 1024.
  int seeding_points_per_centroid = 4;
  uint64_t seed = 0x5eed;
};

struct KMeansResult {
  std::vector<float> centroids;  // [k][dim]
  // Mean squared distance of the training points to their nearest centroid,
  // right after seeding and after the last iteration.
  double initial_inertia = 0;
  double inertia = 0;
  int64_t training_points = 0;  // points actually used (after subsampling)
};

// Clusters x into params.k centroids.
// Errors: kInvalidArgument for dim < 1, k < 1, n < k, iterations < 0, or
// non-positive per-centroid limits.
absl::StatusOr<KMeansResult> KMeans(const float* x, int64_t n, int dim,
                                    const KMeansParams& params);

// params.iterations Lloyd iterations on all n points (no subsampling, no
// seeding: params.k, params.iterations only) from the given initial
// centroids [k][dim]. If assign is not null it receives, for each point, the
// index of its nearest final centroid (the assignment that the returned
// inertia measures), so callers need not assign again.
// Errors: kInvalidArgument for dim < 1, k < 1, n < 1, iterations < 0, or
// initial_centroids not holding k * dim floats.
absl::StatusOr<KMeansResult> KMeansFromCentroids(
    const float* x, int64_t n, int dim, const KMeansParams& params,
    std::vector<float> initial_centroids, int32_t* assign = nullptr);

// For each point, the index of the nearest centroid (ties: lowest index) and,
// if dist is not null, its squared distance (clamped at 0). Batched through
// sgemm; c_norms[j] = ||c_j||^2. Used by k-means and by RVQ training/encode.
void AssignNearest(const float* x, int64_t n, int dim, const float* c,
                   const float* c_norms, int k, int32_t* assign, float* dist);

}  // namespace vqkv

#endif  // VQKV_KERNELS_KMEANS_H_
