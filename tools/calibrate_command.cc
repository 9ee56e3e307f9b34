
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "eval/evaluate.h"
#include "eval/kv_collector.h"
#include "kernels/vq_codec.h"
#include "tools/calibration_study.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace vqkv::tools {
namespace {

struct CalibrateArgs {
  std::string model;
  std::vector<std::string> texts;
  std::string out;
  CodecFlags codec;
  // 16k tokens x 3 heads = 48k vectors per layer quantizer, all of which
  // the default fit uses (48 per centroid x 1024): held-out error against
  // calibration size in docs/FIDELITY.md ("Calibration size").
  int64_t max_tokens = 16384;
  int64_t ctx = 2048;
  int64_t skip = 4;
  uint64_t seed = 0x5eed;
  // The calibration-size study (tools/calibration_study.h): with
  // --study-sizes, no codebook file is written.
  std::vector<int64_t> study_sizes;
  std::vector<int> study_layers;
  std::string holdout;
  int64_t holdout_tokens = 8192;
  bool study_all_points = false;
  bool json = false;
};

int RunStudy(const CalibrateArgs& a, const VqConfig& config) {
  if (a.holdout.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--study-sizes needs --holdout, a text never used for calibration"));
  }
  absl::StatusOr<LoadedModel> m = LoadModel(a.model);
  if (!m.ok()) return Fail(m.status());
  const int layers = m->model->config().kv_layout().layers;
  CalibrationStudyOptions o;
  o.config = config;
  o.sizes = a.study_sizes;
  // Default: first, middle and last layer.
  o.layers = a.study_layers.empty()
                 ? std::vector<int>{0, layers / 2, layers - 1}
                 : a.study_layers;
  o.holdout_tokens = a.holdout_tokens;
  o.ctx = a.ctx;
  o.skip = a.skip;
  o.seed = a.seed;
  o.all_points = a.study_all_points;
  absl::StatusOr<std::vector<int32_t>> calib =
      TokenizeFiles(*m->tokenizer, a.texts, a.skip + 2);
  if (!calib.ok()) return Fail(calib.status());
  absl::StatusOr<std::vector<int32_t>> held =
      TokenizeFiles(*m->tokenizer, {a.holdout}, a.skip + 2);
  if (!held.ok()) return Fail(held.status());
  ProgressBar bar("study", 1);
  absl::StatusOr<std::vector<CalibrationStudyRow>> rows = RunCalibrationStudy(
      *m->model, *calib, *held, o,
      [&bar](double f, const std::string& detail) { bar.Update(f, detail); });
  if (!rows.ok()) return Fail(rows.status());
  bar.Finish(absl::StrFormat("%d sizes", rows->size()));
  if (a.json) {
    for (const CalibrationStudyRow& r : *rows) {
      std::printf("%s\n", CalibrationStudyJson(o, r).c_str());
    }
  } else {
    std::printf("%s", FormatCalibrationStudy(o, *rows).c_str());
  }
  return 0;
}

int Run(const CalibrateArgs& a) {
  absl::StatusOr<VqConfig> config = ToVqConfig(a.codec);
  if (!config.ok()) return Fail(config.status());
  if (!a.study_sizes.empty()) return RunStudy(a, *config);
  if (a.out.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--out is required (unless --study-sizes runs the size study)"));
  }
  if (a.max_tokens < 1) {
    return Fail(absl::InvalidArgumentError("--max-tokens must be >= 1"));
  }
  if (a.ctx <= a.skip) {
    return Fail(absl::InvalidArgumentError("--ctx must exceed --skip"));
  }
  absl::StatusOr<LoadedModel> m = LoadModel(a.model);
  if (!m.ok()) return Fail(m.status());
  const model::LlamaModel& model = *m->model;
  const KvLayout layout = model.config().kv_layout();
  // Validate the codec config before spending minutes on collection.
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      VqCodec::Create(layout, *config);
  if (!codec.ok()) return Fail(codec.status());
  absl::StatusOr<std::vector<int32_t>> ids =
      TokenizeFiles(*m->tokenizer, a.texts, a.skip + 2);
  if (!ids.ok()) return Fail(ids.status());

  absl::StatusOr<CodebookConfig> resolved =
      VqCodec::ResolveConfig(layout, *config);
  if (!resolved.ok()) return Fail(resolved.status());
  const VqRate rate = ComputeVqRate(resolved->key_stages(), resolved->key_bits,
                                    resolved->value_stages,
                                    resolved->value_bits, layout.head_dim);
  std::fprintf(stderr,
               "vqkv calibrate: %s (%s), %d layers x %d kv heads x %d; keys %d "
               "stages x %d bits (%s split, %s-RoPE), values %d x %d bits: "
               "%.4f bits/element, %.1f%% smaller than fp16; %zu text "
               "tokens, collecting up to %lld\n",
               model.config().name.c_str(), m->identity.ToString().c_str(),
               layout.layers, layout.kv_heads, layout.head_dim,
               resolved->key_stages(), resolved->key_bits,
               a.codec.key_split.c_str(), a.codec.keys.c_str(),
               resolved->value_stages, resolved->value_bits,
               rate.bits_per_element, 100 * rate.compression_ratio, ids->size(),
               static_cast<long long>(a.max_tokens));

  eval::KvCollectorOptions ko;
  ko.max_tokens = a.max_tokens;
  ko.keys_pre_rope = !config->keys_post_rope;
  ko.skip_positions_below = a.skip;
  // Collection: whole windows of ctx tokens, as eval sees them.
  ProgressBar collect_bar("collect", static_cast<double>(std::min<int64_t>(
                                         a.max_tokens, ids->size())));
  ko.progress = [&collect_bar](int64_t t) {
    collect_bar.Update(static_cast<double>(t), absl::StrFormat("%d tokens", t));
  };
  eval::KvCollector collector(layout, ko);
  if (absl::StatusOr<int64_t> run =
          eval::CollectKv(model, *ids, a.ctx, &collector);
      !run.ok()) {
    return Fail(run.status());
  }
  collect_bar.Finish(absl::StrFormat("%d tokens of K/V", collector.tokens()));
  const int64_t tokens = std::min(collector.tokens(), a.max_tokens);
  if (tokens < 1) {
    return Fail(absl::InvalidArgumentError(
        "the text is too short: no token past the sink positions"));
  }

  // Fitting, layer by layer (FitLayer); each layer's buffers are dropped
  // once fitted.
  ProgressBar bar("fit", static_cast<double>(layout.layers));
  const int64_t per_token = int64_t{layout.kv_heads} * layout.head_dim;
  for (int layer = 0; layer < layout.layers; ++layer) {
    FitOptions fo;
    fo.seed = a.seed + static_cast<uint64_t>(layer);
    fo.progress = [&bar, layer](const FitProgress& p) {
      const double f =
          p.total > 0 ? static_cast<double>(p.done) / p.total : 0.0;
      bar.Update(layer + f, absl::StrFormat("layer %d: %s", layer, p.phase));
    };
    const std::vector<float>& k = collector.layer_keys(layer);
    const std::vector<float>& v = collector.layer_values(layer);
    if (static_cast<int64_t>(k.size()) < tokens * per_token) {
      return Fail(absl::InternalError("collector holds too few tokens"));
    }
    absl::Status s = (*codec)->FitLayer(layer, k.data(), v.data(), tokens, fo);
    if (!s.ok()) return Fail(s);
    bar.Update(layer + 1.0, absl::StrFormat("layer %d fitted", layer));
  }
  bar.Finish(absl::StrFormat("%d layers", layout.layers));
  // The file records the model, so eval and generate refuse another one.
  CodebookSet set = (*codec)->codebooks();
  if (absl::Status s = set.SetIdentity(m->identity); !s.ok()) return Fail(s);
  if (absl::Status s = set.Save(a.out); !s.ok()) return Fail(s);
  // The identity is hashed, so the file's codec descriptor (cb=) is that of
  // the identified set, not of the codec that was fitted.
  absl::StatusOr<std::unique_ptr<VqCodec>> saved =
      VqCodec::FromCodebookSet(std::move(set));
  if (!saved.ok()) return Fail(saved.status());
  std::fprintf(stderr, "wrote %s (%s), fitted for %s\n", a.out.c_str(),
               (*saved)->Descriptor().c_str(), m->identity.ToString().c_str());
  return 0;
}

}  // namespace

std::function<int()> AddCalibrateCommand(CLI::App* app) {
  auto args = std::make_shared<CalibrateArgs>();
  CLI::App* cmd = app->add_subcommand(
      "calibrate", "Fit VQ codebooks on a model's KV over text");
  cmd->add_option("--model", args->model, "GGUF model file")->required();
  cmd->add_option("--text", args->texts, "calibration text (repeatable)")
      ->required();
  cmd->add_option("--out", args->out, "codebook file to write");
  AddCodecFlags(cmd, &args->codec);
  cmd->add_option("--max-tokens", args->max_tokens, "tokens of K/V to collect")
      ->capture_default_str();
  cmd->add_option("--ctx", args->ctx, "window length the text is run in")
      ->capture_default_str();
  cmd->add_option("--skip", args->skip,
                  "leading positions of each window not collected (the "
                  "attention sinks, which stay fp16)")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "k-means seed")->capture_default_str();
  cmd->add_option("--study-sizes", args->study_sizes,
                  "calibration-size study instead of a file: fit on each "
                  "many tokens, print training and held-out error")
      ->delimiter(',');
  cmd->add_option("--study-layers", args->study_layers,
                  "layers the study fits (default: first, middle, last)")
      ->delimiter(',');
  cmd->add_option("--holdout", args->holdout,
                  "held-out text for the study (never a calibration text)");
  cmd->add_option("--holdout-tokens", args->holdout_tokens,
                  "held-out tokens the study measures on")
      ->capture_default_str();
  cmd->add_flag("--study-all-points", args->study_all_points,
                "study: k-means on every collected vector, not a sample");
  cmd->add_flag("--json", args->json, "study: one JSON object per row");
  return [cmd, args]() { return cmd->parsed() ? Run(*args) : -1; };
}

}  // namespace vqkv::tools
