// How much calibration text the VQ codebooks need: fits a few layers'
// codebooks on growing prefixes of a calibration text and measures the
// reconstruction error on those prefixes and on held-out text
// (`vqkv calibrate --study-sizes`, docs/FIDELITY.md "Calibration size").
//
// k-means with 1024 codewords overfits a small sample: the training error
// keeps falling with fewer points while the held-out error rises. The gap
// between the two columns is what this measures.
//
// Thread safety: one study at a time per model (the model is read-only, but
// the study uses all of its threads).
#ifndef VQKV_TOOLS_CALIBRATION_STUDY_H_
#define VQKV_TOOLS_CALIBRATION_STUDY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/vq_codec.h"
#include "model/llama_model.h"

namespace vqkv::tools {

struct CalibrationStudyOptions {
  VqConfig config;             // codec and training options, as calibrate's
  std::vector<int64_t> sizes;  // calibration tokens per row, ascending
  std::vector<int> layers;     // layers fitted and measured
  int64_t holdout_tokens = 8192;
  int64_t ctx = 2048;  // window the texts are run in
  int64_t skip = 4;    // leading positions of each window not collected
  uint64_t seed = 0x5eed;
  // Each size is fitted with the training options as given (the default
  // samples at most max_points_per_centroid * K vectors per stage, whatever
  // the size); with all_points, a second row per size raises
  // max_points_per_centroid so k-means sees every collected vector (when
  // that is more than the sample).
  bool all_points = false;
};

struct CalibrationStudyRow {
  int64_t tokens = 0;       // calibration tokens the codebooks were fitted on
  bool all_points = false;  // k-means on every vector, not a sample
  int64_t sample = 0;       // vectors per key quantizer k-means ran on
  // Relative squared error sum ||x - x'||^2 / sum ||x||^2, mean over the
  // studied layers. train: on the calibration prefix (at most holdout_tokens
  // of it); holdout: on the held-out text.
  double key_train = 0, key_holdout = 0;
  double value_train = 0, value_holdout = 0;
  double fit_seconds = 0;  // wall time of the fits, all studied layers
};

// Runs the study. calibration and holdout are token ids. progress(fraction,
// detail) is called as work advances; may be empty.
// Errors: kInvalidArgument for empty or non-ascending sizes, a layer out of
// range, holdout_tokens < 1, or a text too short for the largest size (the
// message says how many tokens it holds); codec and model errors.
absl::StatusOr<std::vector<CalibrationStudyRow>> RunCalibrationStudy(
    const model::LlamaModel& model, absl::Span<const int32_t> calibration,
    absl::Span<const int32_t> holdout, const CalibrationStudyOptions& options,
    const std::function<void(double, const std::string&)>& progress);

// The table printed by `vqkv calibrate --study-sizes`, and one JSON object
// per row (for scripts/fidelity.sh).
std::string FormatCalibrationStudy(
    const CalibrationStudyOptions& options,
    const std::vector<CalibrationStudyRow>& rows);
std::string CalibrationStudyJson(const CalibrationStudyOptions& options,
                                 const CalibrationStudyRow& row);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_CALIBRATION_STUDY_H_
