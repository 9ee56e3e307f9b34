#include "tools/calibration_study.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "eval/evaluate.h"
#include "eval/kv_collector.h"
#include "kernels/rvq.h"
#include "tools/common.h"

namespace vqkv::tools {
namespace {

using Progress = std::function<void(double, const std::string&)>;

// The studied layers' K/V of `ids`, at most max_tokens tokens.
absl::StatusOr<std::unique_ptr<eval::KvCollector>> Collect(
    const model::LlamaModel& model, absl::Span<const int32_t> ids,
    int64_t max_tokens, const CalibrationStudyOptions& o, const char* what,
    const Progress& progress, double begin, double end) {
  // Before the collector reserves max_tokens of buffers.
  if (static_cast<int64_t>(ids.size()) < max_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the %s text has %d tokens, fewer than the %d asked for", what,
        ids.size(), max_tokens));
  }
  eval::KvCollectorOptions ko;
  ko.max_tokens = max_tokens;
  ko.keys_pre_rope = !o.config.keys_post_rope;
  ko.skip_positions_below = o.skip;
  ko.layers = o.layers;
  if (progress) {
    ko.progress = [&](int64_t t) {
      progress(begin + (end - begin) * static_cast<double>(t) / max_tokens,
               absl::StrFormat("%s: %d tokens", what, t));
    };
  }
  auto collector =
      std::make_unique<eval::KvCollector>(model.config().kv_layout(), ko);
  absl::StatusOr<int64_t> run =
      eval::CollectKv(model, ids, o.ctx, collector.get());
  if (!run.ok()) return run.status();
  if (collector->tokens() < max_tokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the %s text gives %d tokens of K/V (windows of %d, %d skipped per "
        "window), fewer than the %d asked for",
        what, collector->tokens(), o.ctx, o.skip, max_tokens));
  }
  return collector;
}

struct Errors {
  double keys = 0, values = 0;
};

// Encodes and decodes `tokens` tokens through a one-layer codec.
absl::StatusOr<Errors> Roundtrip(const VqCodec& codec, const float* keys,
                                 const float* values, int64_t tokens) {
  std::vector<uint8_t> bytes(codec.EncodedBytes(tokens));
  absl::Status s =
      codec.Encode(keys, values, tokens, bytes.data(), bytes.size());
  if (!s.ok()) return s;
  const KvLayout& l = codec.layout();
  const int64_t n = tokens * l.kv_heads;
  std::vector<float> k(static_cast<size_t>(n * l.head_dim));
  std::vector<float> v(k.size());
  s = codec.Decode(bytes.data(), bytes.size(), tokens, k.data(), v.data());
  if (!s.ok()) return s;
  return Errors{RelativeMse(keys, k.data(), n, l.head_dim),
                RelativeMse(values, v.data(), n, l.head_dim)};
}

}  // namespace

absl::StatusOr<std::vector<CalibrationStudyRow>> RunCalibrationStudy(
    const model::LlamaModel& model, absl::Span<const int32_t> calibration,
    absl::Span<const int32_t> holdout, const CalibrationStudyOptions& o,
    const Progress& progress) {
  const KvLayout full = model.config().kv_layout();
  if (o.sizes.empty() || o.sizes.front() < 1 ||
      !std::is_sorted(o.sizes.begin(), o.sizes.end())) {
    return absl::InvalidArgumentError(
        "--study-sizes must be ascending token counts >= 1");
  }
  if (o.layers.empty()) {
    return absl::InvalidArgumentError("--study-layers is empty");
  }
  for (int layer : o.layers) {
    if (layer < 0 || layer >= full.layers) {
      return absl::InvalidArgumentError(
          absl::StrFormat("study layer %d is outside the model's 0..%d", layer,
                          full.layers - 1));
    }
  }
  if (o.holdout_tokens < 1) {
    return absl::InvalidArgumentError("--holdout-tokens must be >= 1");
  }
  if (o.ctx <= o.skip) {
    return absl::InvalidArgumentError("--ctx must exceed --skip");
  }
  const KvLayout one{1, full.kv_heads, full.head_dim};
  absl::StatusOr<CodebookConfig> resolved =
      VqCodec::ResolveConfig(one, o.config);
  if (!resolved.ok()) return resolved.status();

  // Collection is a small share of the time; fitting the largest size
  // dominates (fit cost grows linearly with the sample).
  const double collect_share = 0.1;
  absl::StatusOr<std::unique_ptr<eval::KvCollector>> calib =
      Collect(model, calibration, o.sizes.back(), o, "calibration", progress, 0,
              collect_share / 2);
  if (!calib.ok()) return calib.status();
  absl::StatusOr<std::unique_ptr<eval::KvCollector>> held =
      Collect(model, holdout, o.holdout_tokens, o, "held-out", progress,
              collect_share / 2, collect_share);
  if (!held.ok()) return held.status();

  const int64_t vectors_per_token = o.config.per_head ? 1 : full.kv_heads;
  const int min_k = 1 << std::min(resolved->key_bits, resolved->value_bits);
  // The fits to run, (size, all points), in order.
  std::vector<std::pair<int64_t, bool>> fits;
  for (int64_t size : o.sizes) {
    fits.emplace_back(size, false);
    if (o.all_points &&
        size * vectors_per_token >
            int64_t{o.config.training.max_points_per_centroid} * min_k) {
      fits.emplace_back(size, true);
    }
  }
  double work_total = 0;
  for (const auto& fit : fits) work_total += static_cast<double>(fit.first);
  work_total *= static_cast<double>(o.layers.size());
  double work_done = 0;

  std::vector<CalibrationStudyRow> rows;
  for (const auto& [size, all] : fits) {
    VqConfig config = o.config;
    if (all) {
      config.training.max_points_per_centroid =
          static_cast<int>((size * vectors_per_token + min_k - 1) / min_k);
    }
    CalibrationStudyRow row;
    row.tokens = size;
    row.all_points = all;
    row.sample = std::min<int64_t>(
        size * vectors_per_token,
        int64_t{config.training.max_points_per_centroid} << resolved->key_bits);
    if (config.training.max_training_points > 0) {
      row.sample = std::min(row.sample, config.training.max_training_points);
    }
    for (int layer : o.layers) {
      absl::StatusOr<std::unique_ptr<VqCodec>> codec =
          VqCodec::Create(one, config);
      if (!codec.ok()) return codec.status();
      const float* ck = (*calib)->layer_keys(layer).data();
      const float* cv = (*calib)->layer_values(layer).data();
      FitOptions fo;
      fo.seed = o.seed + static_cast<uint64_t>(layer);
      const double weight = static_cast<double>(size) / work_total;
      if (progress) {
        fo.progress = [&, size = size](const FitProgress& p) {
          const double f =
              p.total > 0 ? static_cast<double>(p.done) / p.total : 0.0;
          progress(
              collect_share + (1 - collect_share) * (work_done + f * weight),
              absl::StrFormat("%d tokens, layer %d: %s", size, layer, p.phase));
        };
      }
      const auto start = std::chrono::steady_clock::now();
      absl::Status s = (*codec)->FitLayer(0, ck, cv, size, fo);
      if (!s.ok()) return s;
      row.fit_seconds += std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - start)
                             .count();
      work_done += weight;
      absl::StatusOr<Errors> train =
          Roundtrip(**codec, ck, cv, std::min(size, o.holdout_tokens));
      if (!train.ok()) return train.status();
      absl::StatusOr<Errors> test =
          Roundtrip(**codec, (*held)->layer_keys(layer).data(),
                    (*held)->layer_values(layer).data(), o.holdout_tokens);
      if (!test.ok()) return test.status();
      row.key_train += train->keys;
      row.value_train += train->values;
      row.key_holdout += test->keys;
      row.value_holdout += test->values;
    }
    const double layers = static_cast<double>(o.layers.size());
    row.key_train /= layers;
    row.value_train /= layers;
    row.key_holdout /= layers;
    row.value_holdout /= layers;
    rows.push_back(row);
  }
  return rows;
}

std::string FormatCalibrationStudy(
    const CalibrationStudyOptions& o,
    const std::vector<CalibrationStudyRow>& rows) {
  std::string out = absl::StrFormat(
      "calibration size study: layers %s, %d held-out tokens, %s fit on a "
      "sample of up to %d points per centroid (sample) or on every vector "
      "(all); relative squared error, mean over the layers\n",
      absl::StrJoin(o.layers, ","), o.holdout_tokens,
      RvqFitName(o.config.training.fit),
      o.config.training.max_points_per_centroid);
  absl::StrAppendFormat(&out, "%9s %6s %9s %10s %10s %10s %10s %9s\n", "tokens",
                        "fit on", "vectors", "K train", "K held-out", "V train",
                        "V held-out", "fit s");
  for (const CalibrationStudyRow& r : rows) {
    absl::StrAppendFormat(
        &out, "%9d %6s %9d %10.5f %10.5f %10.5f %10.5f %9.1f\n", r.tokens,
        r.all_points ? "all" : "sample", r.sample, r.key_train, r.key_holdout,
        r.value_train, r.value_holdout, r.fit_seconds);
  }
  return out;
}

std::string CalibrationStudyJson(const CalibrationStudyOptions& o,
                                 const CalibrationStudyRow& r) {
  return absl::StrFormat(
      "{\"task\":\"calibration_size\",\"fit\":\"%s\",\"tokens\":%d,"
      "\"all_points\":%s,\"sample\":%d,\"layers\":[%s],\"holdout_tokens\":%d,"
      "\"key_train\":%.6g,\"key_holdout\":%.6g,\"value_train\":%.6g,"
      "\"value_holdout\":%.6g,\"fit_seconds\":%.3f}",
      RvqFitName(o.config.training.fit), r.tokens,
      r.all_points ? "true" : "false", r.sample, absl::StrJoin(o.layers, ","),
      o.holdout_tokens, r.key_train, r.key_holdout, r.value_train,
      r.value_holdout, r.fit_seconds);
}

}  // namespace vqkv::tools
