// Residual vector quantization (RVQ) of vectors of `dim` floats.
//
// Stage s holds a codebook of K = 2^bits codewords. Encoding picks, stage by
// stage, a codeword for the current residual and subtracts it; the code of a
// vector is one index per stage; decoding sums the chosen codewords.
// Training fits stage s by k-means (or SimVQ, RvqFit) on the residuals left
// by stages 0..s-1.
//
// Layouts: x / out float [n][dim]; codes uint16 [n][stages];
// codebooks float [stages][K][dim].
//
// Thread safety: a fitted ResidualQuantizer is immutable; its const methods
// may run concurrently. Fit must not run concurrently with anything else on
// the same object.
#ifndef VQKV_KERNELS_RVQ_H_
#define VQKV_KERNELS_RVQ_H_

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/codec.h"
#include "kernels/kmeans.h"
#include "kernels/simvq.h"

namespace vqkv {

// The update that fits each stage's codebook from its seeds.
enum class RvqFit {
  kKMeans,  // Lloyd iterations: each codeword := mean of its vectors
  kSimVq,   // SimVQ: codebook = seeds x a learned map (kernels/simvq.h)
};
// "kmeans" / "simvq", and back; kInvalidArgument naming the valid names.
std::string_view RvqFitName(RvqFit fit);
absl::StatusOr<RvqFit> ParseRvqFit(std::string_view name);

// How a residual quantizer is fitted (docs/CODEC.md, "Fit"): the one
// definition of the training defaults, embedded by RvqParams and VqConfig.
struct RvqTraining {
  // Lloyd iterations per stage on up to max_points_per_centroid * K
  // vectors (KMeansParams' defaults: 2 and 128). With the shared seeding
  // below, more iterations lower the training error but not the held-out
  // error (they overfit), and cost one assignment pass each.
  int kmeans_iterations = KMeansParams{}.iterations;
  int max_points_per_centroid = KMeansParams{}.max_points_per_centroid;
  // Seeding. false (default): every stage starts its k-means from the
  // current residuals of one random sample of K training vectors, the same
  // vectors at every stage. Then the initial codewords of successive stages
  // telescope (stage s starts at what stages 0..s-1 left of those vectors);
  // on 5 of our 6 synthetic key/value sets this lowered the held-out error
  // by 5-50% against seeding each stage independently, on the sixth it
  // doubled it (docs/CODEC.md): which is better depends on the data.
  // true: independent k-means++ per stage on seeding_points_per_centroid * K
  // residuals (the first implementation's behaviour).
  bool kmeanspp_seeding = false;
  int seeding_points_per_centroid =  // k-means++ only
      KMeansParams{}.seeding_points_per_centroid;
  // The stage update (docs/CODEC.md, "SimVQ fit"). kKMeans runs
  // kmeans_iterations Lloyd iterations from the seeds. kSimVq freezes the
  // seeds as the basis B, fits C = B W by simvq_iterations closed-form
  // least-squares updates of W (on the same k-means sample), then runs
  // simvq_lloyd_iterations Lloyd iterations from C (0 = pure SimVQ; > 0 =
  // the hybrid). kmeans_iterations is unused by kSimVq.
  RvqFit fit = RvqFit::kKMeans;
  int simvq_iterations = SimVqParams{}.iterations;
  int simvq_lloyd_iterations = 0;
  double simvq_ridge = SimVqParams{}.ridge;
  // After all stages are fitted: passes of codebook refinement by block
  // coordinate descent (each codeword := mean over its training vectors of
  // x minus the other stages' codewords, stage after stage), each pass
  // followed by a greedy re-encode of the training set that keeps, per
  // vector, the better of its old and new codes. Never increases the
  // training error.
  int refine_passes = 0;
  // Fit uses at most this many of the given vectors (a deterministic random
  // subset); 0 = all of them.
  int64_t max_training_points = 0;
};

struct RvqParams {
  int dim = 0;     // vector length, 1..65535
  int stages = 0;  // 1..4096
  int bits = 8;    // bits per stage index, 1..16 (K = 2^bits)

  RvqTraining training;
  uint64_t seed = 0x5eed;

  // Encode(): 1 = greedy; B > 1 = beam search keeping the B best partial
  // reconstructions per vector.
  int beam_width = 1;

  int K() const { return 1 << bits; }
  // kInvalidArgument naming the offending field.
  absl::Status Validate() const;
};

class ResidualQuantizer {
 public:
  ResidualQuantizer() = default;

  // Wraps existing codebooks ([stages][K][dim] floats, e.g. loaded from a
  // codebook file). Errors: kInvalidArgument for bad params or a size
  // mismatch.
  static absl::StatusOr<ResidualQuantizer> FromCodebooks(
      const RvqParams& params, std::vector<float> codebooks);

  // Trains params.stages codebooks on x [n][params.dim]. Replaces any
  // previous state. progress (may be empty) is called after each stage with
  // phase "rvq stage s/S", done = s, total = S.
  // Errors: kInvalidArgument for bad params, n < K, or non-finite input.
  absl::Status Fit(
      const RvqParams& params, const float* x, int64_t n,
      const std::function<void(const FitProgress&)>& progress = nullptr);

  bool fitted() const { return fitted_; }
  const RvqParams& params() const { return params_; }
  int dim() const { return params_.dim; }
  int stages() const { return params_.stages; }
  int bits() const { return params_.bits; }
  int K() const { return params_.K(); }
  const std::vector<float>& codebooks() const { return codebooks_; }
  const std::vector<float>& norms() const { return norms_; }  // [stages][K]
  // Relative MSE of the training vectors under the codes Fit assigned them
  // (after refinement, if any); 0 when not fitted by Fit.
  double training_mse() const { return training_mse_; }

  // Encodes n vectors with params().beam_width.
  // Errors: kFailedPrecondition when not fitted; kInvalidArgument for n < 0.
  absl::Status Encode(const float* x, int64_t n, uint16_t* codes) const;
  // Greedy: nearest codeword per stage. Large batches go through sgemm,
  // small ones through the SIMD kernel (cpu::RvqEncodeGreedy).
  absl::Status EncodeGreedy(const float* x, int64_t n, uint16_t* codes) const;
  // Beam search of width beam_width >= 1 (1 is EncodeGreedy).
  absl::Status EncodeBeam(const float* x, int64_t n, int beam_width,
                          uint16_t* codes) const;
  // out[i] = sum over s of codebook[s][codes[i][s]].
  // Errors: kFailedPrecondition when not fitted; kInvalidArgument for an
  // index >= K.
  absl::Status Decode(const uint16_t* codes, int64_t n, float* out) const;

 private:
  void ComputeNorms();
  // The refinement passes of Fit. x: the m training vectors; codes [m][S]
  // and res (x minus its reconstruction) are updated in place.
  void Refine(const float* x, int64_t m, int passes, uint16_t* codes,
              float* res);

  RvqParams params_;
  bool fitted_ = false;
  std::vector<float> codebooks_;
  std::vector<float> norms_;
  double training_mse_ = 0;
};

// Relative MSE: sum ||x - y||^2 / sum ||x||^2 over n vectors of dim floats.
double RelativeMse(const float* x, const float* y, int64_t n, int dim);

}  // namespace vqkv

#endif  // VQKV_KERNELS_RVQ_H_
