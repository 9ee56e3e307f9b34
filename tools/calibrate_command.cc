
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "eval/evaluate.h"
#include "eval/kv_collector.h"
#include "kernels/vq_codec.h"
#include "tools/calibration_study.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/key_gain_fit.h"

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
  // Key gains (tools/key_gain_fit.h), fitted on the gain_tokens that follow
  // the fitted ones, for layers from key_gain_from_layer (-1: half the
  // layers: on SmolLM2-135M gains on layers 15-29 alone kept the retrieval
  // of gains on every layer at slightly lower KL; docs/FIDELITY.md, "The
  // key gain").
  int64_t gain_tokens = 4096;
  int key_gain_from_layer = -1;
  // Gains set to 1 + strength (fitted - 1) (tools/key_gain_fit.h); negative:
  // AutoKeyGainStrength of the gains fitted at 1 (docs/FIDELITY.md, "Gain
  // strength").
  double gain_strength = -1.0;
  // Keep this file's codebooks and fit only the key gains.
  std::string refit_gains;
  // Fit the gains on this text instead of the calibration text's next
  // tokens: text unlike the calibration text shows the shrinkage that text
  // a deployment serves will see.
  std::string gain_text;
  // Key refinement (CodebookSet::SetKeyRefinement) of the refine_layers
  // layers with the largest key gain fitted at strength 1, refine_stages
  // stages each (-1: the key stages). On SmolLM2-135M one layer with 20
  // more stages (0.05 bits/element) takes ctx-8192 perplexity from +1.3-2.0%
  // to about +1% and top-1 at window 1024 past 0.97 (docs/FIDELITY.md, "Key
  // refinement").
  int refine_layers = 1;
  int refine_stages = -1;
  // The largest key gain of a refined layer (RefinedKeyGainStrength).
  double refine_gain = 1.0 + kRefinedKeyGainExcess;
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
  o.config =
      WithCalibrateStages(config, m->model->config().kv_layout().head_dim);
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
  absl::StatusOr<VqConfig> config = ToVqConfig(a.codec);  // stages: below
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
  if (a.gain_tokens < 0) {
    return Fail(absl::InvalidArgumentError("--key-gain-tokens must be >= 0"));
  }
  if (a.refine_layers < 0 || a.refine_stages == 0 || a.refine_stages < -1 ||
      a.refine_stages > 4096) {
    return Fail(absl::InvalidArgumentError(
        "--key-refine-layers must be >= 0 and --key-refine-stages in 1..4096"));
  }
  // Gains fitted on keys the codebooks were fitted on come out near 1
  // (tools/key_gain_fit.h), so a calibration text is refused here.
  for (const std::string& text : a.texts) {
    std::error_code ec;
    if (!a.gain_text.empty() &&
        std::filesystem::equivalent(a.gain_text, text, ec)) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--key-gain-text ", a.gain_text,
          " is a calibration text; the gains need text the codebooks were "
          "not fitted on (without --key-gain-text they use the calibration "
          "text's tokens after the fitted ones)")));
    }
  }
  absl::StatusOr<LoadedModel> m = LoadModel(a.model);
  if (!m.ok()) return Fail(m.status());
  const model::LlamaModel& model = *m->model;
  const KvLayout layout = model.config().kv_layout();
  *config = WithCalibrateStages(*config, layout.head_dim);
  // Validate the codec config (or load the codebooks whose gains are
  // refitted) before spending minutes on collection.
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      VqCodec::Create(layout, *config);
  if (!a.refit_gains.empty()) {
    if (a.gain_tokens == 0) {
      return Fail(absl::InvalidArgumentError(
          "--refit-gains needs --key-gain-tokens > 0"));
    }
    absl::StatusOr<CodebookSet> loaded = CodebookSet::Load(a.refit_gains);
    if (!loaded.ok()) return Fail(loaded.status());
    if (absl::Status s = loaded->CheckModel(
            m->identity, absl::StrCat("codebooks ", a.refit_gains));
        !s.ok()) {
      return Fail(s);
    }
    if (loaded->config().layout != layout) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "codebooks ", a.refit_gains, " do not match the model's layout")));
    }
    config->keys_post_rope = loaded->config().keys_post_rope;
    codec = VqCodec::FromCodebookSet(*std::move(loaded));
  }
  if (!codec.ok()) return Fail(codec.status());
  absl::StatusOr<std::vector<int32_t>> ids =
      TokenizeFiles(*m->tokenizer, a.texts, a.skip + 2);
  if (!ids.ok()) return Fail(ids.status());

  absl::StatusOr<CodebookConfig> resolved =
      a.refit_gains.empty()
          ? VqCodec::ResolveConfig(layout, *config)
          : absl::StatusOr<CodebookConfig>((*codec)->codebooks().config());
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

  const int gain_from =
      a.key_gain_from_layer < 0 ? layout.layers / 2 : a.key_gain_from_layer;
  const bool gains = a.gain_tokens > 0 && gain_from < layout.layers;
  const bool own_gain_text = gains && !a.gain_text.empty();
  eval::KvCollectorOptions ko;
  ko.max_tokens = a.max_tokens + (gains && !own_gain_text ? a.gain_tokens : 0);
  ko.keys_pre_rope = !config->keys_post_rope;
  ko.skip_positions_below = a.skip;
  // Collection: whole windows of ctx tokens, as eval sees them.
  ProgressBar collect_bar("collect", static_cast<double>(std::min<int64_t>(
                                         ko.max_tokens, ids->size())));
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
  // Fit on the first max_tokens; the gains on the rest. A text too short
  // for both gives the gains a fifth of what there is.
  int64_t tokens = std::min(collector.tokens(), a.max_tokens);
  int64_t held = gains && !own_gain_text ? collector.tokens() - tokens : 0;
  std::unique_ptr<eval::KvCollector> gain_collector;
  if (own_gain_text) {
    absl::StatusOr<std::vector<int32_t>> gain_ids =
        TokenizeFiles(*m->tokenizer, {a.gain_text}, a.skip + 2);
    if (!gain_ids.ok()) return Fail(gain_ids.status());
    eval::KvCollectorOptions go = ko;
    go.max_tokens = a.gain_tokens;
    go.progress = nullptr;
    gain_collector = std::make_unique<eval::KvCollector>(layout, go);
    if (absl::StatusOr<int64_t> run =
            eval::CollectKv(model, *gain_ids, a.ctx, gain_collector.get());
        !run.ok()) {
      return Fail(run.status());
    }
    held = gain_collector->tokens();
  } else if (gains && held < a.gain_tokens) {
    held = std::min(a.gain_tokens, collector.tokens() / 5);
    tokens = collector.tokens() - held;
    std::fprintf(stderr,
                 "vqkv calibrate: the text holds %lld tokens past the sinks, "
                 "fewer than --max-tokens + --key-gain-tokens; fitting on "
                 "%lld, key gains on the last %lld\n",
                 static_cast<long long>(collector.tokens()),
                 static_cast<long long>(tokens), static_cast<long long>(held));
  }
  if (tokens < 1 || (gains && held < 1)) {
    return Fail(absl::InvalidArgumentError(
        "the text is too short: no token past the sink positions"));
  }

  // Fitting, layer by layer (FitLayer); each layer's buffers are dropped
  // once fitted.
  const int64_t per_token = int64_t{layout.kv_heads} * layout.head_dim;
  if (a.refit_gains.empty()) {
    ProgressBar bar("fit", static_cast<double>(layout.layers));
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
      absl::Status s =
          (*codec)->FitLayer(layer, k.data(), v.data(), tokens, fo);
      if (!s.ok()) return Fail(s);
      bar.Update(layer + 1.0, absl::StrFormat("layer %d fitted", layer));
    }
    bar.Finish(absl::StrFormat("%d layers", layout.layers));
  }
  // Key gains (and the key refinement, which they choose and which changes
  // what they undo): every layer's gains are measured first; their mean at
  // strength 1 gives the set's strength, each layer's largest names the
  // layers to refine; then the refined layers' gains are measured again,
  // through the refinement, and every gain is set at its strength.
  const eval::KvCollector* gc =
      own_gain_text ? gain_collector.get() : &collector;
  CodebookSet set = (*codec)->codebooks();
  set.ClearKeyGains();  // --refit-gains replaces every gain of the file
  const auto measure_gains = [&](int layer) -> absl::StatusOr<LayerKeyGainFit> {
    const float* k = collector.layer_keys(layer).data();
    const float* h =
        own_gain_text ? gc->layer_keys(layer).data() : k + tokens * per_token;
    return MeasureLayerKeyGains(**codec, layer, k, tokens, h, held);
  };
  std::vector<LayerKeyGainFit> measured(layout.layers);
  std::vector<double> largest_gain(layout.layers, 0.0);
  double fitted_mean = 0;
  if (gains) {
    int heads = 0;
    for (int layer = gain_from; layer < layout.layers; ++layer) {
      absl::StatusOr<LayerKeyGainFit> fit = measure_gains(layer);
      if (!fit.ok()) return Fail(fit.status());
      measured[layer] = *std::move(fit);
      KeyGainReport r;
      if (absl::Status s = SetLayerKeyGains(measured[layer], 1.0, &set, &r);
          !s.ok()) {
        return Fail(s);
      }
      largest_gain[layer] = r.max_gain;
      fitted_mean =
          (fitted_mean * heads + r.mean_gain * r.heads) / (heads + r.heads);
      heads += r.heads;
    }
  }
  if (a.refit_gains.empty() && a.refine_layers > 0) {
    if (!gains) {
      std::fprintf(stderr,
                   "vqkv calibrate: no key refinement without a gain fit "
                   "(--key-gain-tokens 0): the fitted gains choose its "
                   "layers\n");
    } else {
      // The layers with the largest gains above 1, refined in layer order.
      std::vector<int> order;
      for (int l = gain_from; l < layout.layers; ++l) {
        if (largest_gain[l] > 1.0) order.push_back(l);
      }
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
        return largest_gain[x] > largest_gain[y];
      });
      order.resize(std::min<size_t>(order.size(), a.refine_layers));
      std::sort(order.begin(), order.end());
      const int stages = a.refine_stages > 0
                             ? a.refine_stages
                             : (*codec)->codebooks().config().key_stages();
      ProgressBar bar("refine", static_cast<double>(order.size()));
      for (size_t i = 0; i < order.size(); ++i) {
        const int layer = order[i];
        FitOptions fo;
        fo.seed = a.seed + static_cast<uint64_t>(layer);
        fo.progress = [&bar, i](const FitProgress& p) {
          bar.Update(i + (p.total > 0 ? double(p.done) / p.total : 0.0),
                     p.phase);
        };
        if (absl::Status s = (*codec)->FitKeyRefinement(
                layer, collector.layer_keys(layer).data(), tokens, stages, fo);
            !s.ok()) {
          return Fail(s);
        }
        std::fprintf(stderr,
                     "vqkv calibrate: key refinement of layer %d (largest key "
                     "gain %.4f): %d stages x %d bits\n",
                     layer, largest_gain[layer], stages,
                     (*codec)->codebooks().config().key_bits);
      }
      bar.Finish(absl::StrFormat("%zu layers", order.size()));
      if (!order.empty()) {
        set = (*codec)->codebooks();
        set.ClearKeyGains();
      }
    }
  }
  if (gains) {
    const bool auto_strength = a.gain_strength < 0;
    const double strength =
        auto_strength ? AutoKeyGainStrength(fitted_mean) : a.gain_strength;
    KeyGainReport report;
    for (int layer = gain_from; layer < layout.layers; ++layer) {
      if (set.RefinedIndex(layer) < 0) {
        if (absl::Status s =
                SetLayerKeyGains(measured[layer], strength, &set, &report);
            !s.ok()) {
          return Fail(s);
        }
        continue;
      }
      // A refined layer: measured again through the refinement, and its
      // own strength, from its gains at 1.
      absl::StatusOr<LayerKeyGainFit> fit = measure_gains(layer);
      if (!fit.ok()) return Fail(fit.status());
      KeyGainReport at_one;
      if (absl::Status s = SetLayerKeyGains(*fit, 1.0, &set, &at_one);
          !s.ok()) {
        return Fail(s);
      }
      const double refined_strength =
          RefinedKeyGainStrength(at_one.max_gain, strength, a.refine_gain);
      KeyGainReport r;
      if (absl::Status s = SetLayerKeyGains(*fit, refined_strength, &set, &r);
          !s.ok()) {
        return Fail(s);
      }
      std::fprintf(stderr,
                   "vqkv calibrate: key gains of refined layer %d: %.4f to "
                   "%.4f; strength %.3f (fitted largest %.4f)\n",
                   layer, r.min_gain, r.max_gain, refined_strength,
                   at_one.max_gain);
    }
    std::fprintf(
        stderr,
        "vqkv calibrate: key gains of layers %d-%d on %lld held-out "
        "tokens%s: %.4f to %.4f, mean %.4f (refined layers apart); strength "
        "%.3f%s\n",
        gain_from, layout.layers - 1, static_cast<long long>(held),
        own_gain_text ? absl::StrCat(" of ", a.gain_text).c_str() : "",
        report.min_gain, report.max_gain, report.mean_gain, strength,
        auto_strength
            ? absl::StrFormat(" (auto: fitted mean %.4f)", fitted_mean).c_str()
            : "");
  }
  if (absl::Status s = set.SetIdentity(m->identity); !s.ok()) return Fail(s);
  // Pre-RoPE codebooks record the model's rotation, so the client library
  // can code the post-RoPE keys engines cache with them.
  if (!set.config().keys_post_rope) {
    if (absl::Status s = set.SetKeyRope(model.config().rope_spec()); !s.ok()) {
      return Fail(s);
    }
  }
  if (absl::Status s = set.Save(a.out); !s.ok()) return Fail(s);
  // The identity is hashed, so the file's codec descriptor (cb=) is that of
  // the identified set, not of the codec that was fitted.
  absl::StatusOr<std::unique_ptr<VqCodec>> saved =
      VqCodec::FromCodebookSet(std::move(set));
  if (!saved.ok()) return Fail(saved.status());
  std::fprintf(stderr, "wrote %s (%s, %.4f bits/element), fitted for %s%s\n",
               a.out.c_str(), (*saved)->Descriptor().c_str(),
               (*saved)->BitsPerElement(), m->identity.ToString().c_str(),
               (*saved)->codebooks().key_rope()
                   ? absl::StrCat(", key RoPE ",
                                  (*saved)->codebooks().key_rope()->ToString())
                         .c_str()
                   : "");
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
  cmd->add_option("--ctx", args->ctx,
                  "window length the text is run in; post-RoPE keys are "
                  "coded well only at positions below it (docs/FIDELITY.md, "
                  "\"Past the calibration windows\")")
      ->capture_default_str();
  cmd->add_option("--skip", args->skip,
                  "leading positions of each window not collected (the "
                  "attention sinks, which stay fp16)")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "k-means seed")->capture_default_str();
  cmd->add_option("--key-gain-tokens", args->gain_tokens,
                  "tokens after the fitted ones that the key gains are "
                  "fitted on (0: no key gains)")
      ->capture_default_str();
  cmd->add_option("--refit-gains", args->refit_gains,
                  "keep this codebook file's codebooks and fit only the key "
                  "gains (the codec flags are ignored)");
  cmd->add_option("--key-gain-text", args->gain_text,
                  "text the key gains are fitted on (default: the "
                  "calibration text's tokens after the fitted ones)");
  cmd->add_option("--key-gain-strength", args->gain_strength,
                  "scale of the key gains' correction: gain = 1 + strength x "
                  "(fitted gain - 1); above 1 trades agreement for retrieval. "
                  "Default: scaled until the mean gain is 1.065, between 1 "
                  "and 2 (2 at the paper's rate on SmolLM2-135M); 1 for sets "
                  "meant for --key-sketch-bits (docs/FIDELITY.md, \"Gain "
                  "strength\")")
      ->check(CLI::Range(0.0, 10.0));
  cmd->add_option("--key-refine-layers", args->refine_layers,
                  "layers whose keys get a key refinement: the ones with the "
                  "largest key gains (0: none; needs key gains)")
      ->capture_default_str();
  cmd->add_option("--key-refine-stages", args->refine_stages,
                  "stages of each key refinement (default: the key stages)");
  cmd->add_option("--key-refine-gain", args->refine_gain,
                  "largest key gain of a refined layer, which gets its own "
                  "strength (never below the set's): higher finds more "
                  "passkeys at 8k tokens and tracks more variables, lower "
                  "gives better perplexity, top-1 agreement and mkniah "
                  "(docs/FIDELITY.md, \"The refined layer's gain at 4k "
                  "and 8k\")")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 2.0));
  cmd->add_option("--key-gain-from-layer", args->key_gain_from_layer,
                  "first layer with a key gain (default or negative: half the "
                  "layers; the layer count or more: no key gains)");
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
