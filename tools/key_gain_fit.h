// Fitting key gains (CodebookSet::SetKeyGain) at calibration.
//
// k-means codewords are means of calibration keys, so a decoded key is
// pulled toward what calibration keys have in common: a query's logits over
// decoded keys are its exact logits shrunk toward their mean, and a needle
// that stands out (the token a retrieval head looks for) loses most
// (docs/FIDELITY.md, "The key gain"). The gain undoes that on average. Per
// layer and KV head, with centre mu the mean of the keys the layer was
// fitted on, x = k - mu for keys k it was not fitted on (on their own
// training keys codebooks shrink far less) and y = k' - mu for their
// reconstructions,
//
//   gain = tr(W Cxx) / tr(W Cxy),  Cxx = E[x x^T], Cxy = E[x y^T],
//   W = (Cxx + 1e-3 tr(Cxx)/D I)^-1,
//
// the inverse of the mean slope of y on x over the whitened directions of
// key space: every direction counts the same, as it does for a query that
// looks for what is unusual. (Weighting by the keys' own or the queries'
// second moment lets the high-variance directions, where the codebooks lose
// least, decide: gains of 1.003-1.01 that leave retrieval where it was.)
//
// `strength` s scales the correction: the gain set is 1 + s (gain - 1).
// Held-out text of the calibration's own kind measures the shrinkage of
// keys like it; a needle unlike the text is shrunk more, and s > 1 buys
// retrieval with agreement (docs/FIDELITY.md, "Gain strength").
//
// Thread safety: a pure function of its arguments except for `set`.
#ifndef VQKV_TOOLS_KEY_GAIN_FIT_H_
#define VQKV_TOOLS_KEY_GAIN_FIT_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/vq_codec.h"

namespace vqkv::tools {

struct KeyGainReport {
  double min_gain = 0, max_gain = 0, mean_gain = 0;  // over the fitted heads
  int heads = 0;
};

// What the fit measures of one layer, per KV head: the gain at strength 1
// before the clamp, tr(W Cxx) / tr(W Cxy) (NaN where the covariance is
// singular or the slope not positive), and the centre.
struct LayerKeyGainFit {
  int layer = 0;
  std::vector<double> gain;                 // [kv_heads]
  std::vector<std::vector<float>> centres;  // [kv_heads][head_dim]
};

// Measures `layer`'s key gains. fit_keys [fit_tokens][kv_head][head_dim]
// are the keys the layer was fitted on (their mean is the centre),
// held_keys [held_tokens][...] keys it was not; held-out keys are
// reconstructed as the codec codes them now (a key refinement fitted
// later changes the measure). Errors: kInvalidArgument for fit_tokens or
// held_tokens < 1; from codec.ReconstructLayerKeys.
absl::StatusOr<LayerKeyGainFit> MeasureLayerKeyGains(
    const VqCodec& codec, int layer, const float* fit_keys, int64_t fit_tokens,
    const float* held_keys, int64_t held_tokens);

// Sets the gains of `fit` at `strength` in `set`: 1 + strength (gain - 1),
// clamped to [1/kMaxKeyGain, kMaxKeyGain]; 1 where the gain is NaN.
// `report` may be null. Errors: kInvalidArgument for strength outside
// [0, 10]; set->SetKeyGain's.
absl::Status SetLayerKeyGains(const LayerKeyGainFit& fit, double strength,
                              CodebookSet* set, KeyGainReport* report);

// MeasureLayerKeyGains, then SetLayerKeyGains.
absl::Status FitLayerKeyGains(const VqCodec& codec, int layer,
                              const float* fit_keys, int64_t fit_tokens,
                              const float* held_keys, int64_t held_tokens,
                              double strength, CodebookSet* set,
                              KeyGainReport* report);

// The strength `vqkv calibrate` uses unless told one: the correction scaled
// until the gains' mean is 1 + kAutoKeyGainExcess, never below the fit (1)
// nor past twice it (2). `mean_gain` is the mean of the gains fitted at
// strength 1; at or below 1 the answer is 1. On SmolLM2-135M this doubles
// the paper-rate set's gains (fitted mean 1.032: passkey 18/20 against
// 6/20) and keeps the 20-stage set's (mean 1.066), which doubling costs
// +3.5-4.3 points of perplexity (docs/FIDELITY.md, "Gain strength").
inline constexpr double kAutoKeyGainExcess = 0.065;
double AutoKeyGainStrength(double mean_gain);

// The strength of a layer with a key refinement (CodebookSet::
// SetKeyRefinement): the correction scaled until the layer's largest gain
// is `target_gain` (vqkv calibrate --key-refine-gain, default 1 +
// kRefinedKeyGainExcess), never below `set_strength` (the other layers')
// nor past 10. `max_gain` is the layer's largest gain fitted at
// strength 1; at or below 1 the answer is set_strength. Refinement leaves
// less shrinkage to undo, but a refined retrieval layer still needs its
// gain: on SmolLM2-135M layer 18 with 20 more key stages tracks variables
// best with gains up to 1.10 (vartrack 17/20 against 12/20 at the fit's
// own auto strength; docs/FIDELITY.md, "Key refinement"). 1.07 keeps
// perplexity under +1% at ctx 8192 (1.10: +1.07% on sherlock_holmes) and
// ties fp16 on mkniah over 1k-8k tokens, but tracks 19 variables of 40
// where fp16 tracks 26 and 1.10 tracks 28 ("The refined layer's gain at
// 4k and 8k").
inline constexpr double kRefinedKeyGainExcess = 0.10;
double RefinedKeyGainStrength(double max_gain, double set_strength,
                              double target_gain = 1.0 + kRefinedKeyGainExcess);

}  // namespace vqkv::tools

#endif  // VQKV_TOOLS_KEY_GAIN_FIT_H_
