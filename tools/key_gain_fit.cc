#include "tools/key_gain_fit.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/linalg.h"

namespace vqkv::tools {
namespace {

// tr(A^-1 B) for symmetric positive definite A [d][d]; NaN when A is not.
double TraceOfSolve(int d, std::vector<double> a, std::vector<double> b) {
  if (!CholeskySolve(d, a.data(), b.data())) return std::nan("");
  double tr = 0;
  for (int i = 0; i < d; ++i) tr += b[static_cast<size_t>(i) * d + i];
  return tr;
}

}  // namespace

absl::StatusOr<LayerKeyGainFit> MeasureLayerKeyGains(
    const VqCodec& codec, int layer, const float* fit_keys, int64_t fit_tokens,
    const float* held_keys, int64_t held_tokens) {
  if (fit_tokens < 1 || held_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("key gains need fitted and held-out keys; got ",
                     fit_tokens, " and ", held_tokens, " tokens"));
  }
  const KvLayout& lay = codec.layout();
  const int H = lay.kv_heads, D = lay.head_dim;
  std::vector<float> decoded(static_cast<size_t>(held_tokens) * H * D);
  if (absl::Status s = codec.ReconstructLayerKeys(layer, held_keys, held_tokens,
                                                  decoded.data());
      !s.ok()) {
    return s;
  }
  LayerKeyGainFit fit;
  fit.layer = layer;
  const size_t dd = static_cast<size_t>(D) * D;
  for (int h = 0; h < H; ++h) {
    std::vector<double> mu(D, 0.0);
    for (int64_t t = 0; t < fit_tokens; ++t) {
      const float* k = fit_keys + (t * H + h) * D;
      for (int d = 0; d < D; ++d) mu[d] += k[d];
    }
    for (double& v : mu) v /= double(fit_tokens);
    std::vector<double> cxx(dd, 0.0), cxy(dd, 0.0), x(D), y(D);
    for (int64_t t = 0; t < held_tokens; ++t) {
      const float* k = held_keys + (t * H + h) * D;
      const float* r = decoded.data() + (t * H + h) * D;
      for (int d = 0; d < D; ++d) {
        x[d] = k[d] - mu[d];
        y[d] = r[d] - mu[d];
      }
      for (int a = 0; a < D; ++a) {
        for (int b = 0; b < D; ++b) {
          cxx[a * D + b] += x[a] * x[b];
          cxy[a * D + b] += x[a] * y[b];
        }
      }
    }
    std::vector<double> w = cxx;  // Cxx + ridge, to be inverted
    double tr = 0;
    for (int a = 0; a < D; ++a) tr += cxx[a * D + a];
    for (int a = 0; a < D; ++a) w[a * D + a] += 1e-3 * tr / D;
    const double num = TraceOfSolve(D, w, cxx);
    const double den = TraceOfSolve(D, w, cxy);
    fit.gain.push_back(den > 0 && std::isfinite(num / den) ? num / den
                                                           : std::nan(""));
    fit.centres.emplace_back(mu.begin(), mu.end());
  }
  return fit;
}

absl::Status SetLayerKeyGains(const LayerKeyGainFit& fit, double strength,
                              CodebookSet* set, KeyGainReport* report) {
  if (!(strength >= 0 && strength <= 10)) {
    return absl::InvalidArgumentError(
        absl::StrCat("key gain strength must be in [0, 10], got ", strength));
  }
  for (size_t h = 0; h < fit.gain.size(); ++h) {
    double gain = 1.0;
    if (!std::isnan(fit.gain[h])) {
      gain = std::clamp(1.0 + strength * (fit.gain[h] - 1.0), 1.0 / kMaxKeyGain,
                        double{kMaxKeyGain});
    }
    if (absl::Status st =
            set->SetKeyGain(fit.layer, static_cast<int>(h),
                            static_cast<float>(gain), fit.centres[h]);
        !st.ok()) {
      return st;
    }
    if (report != nullptr) {
      report->min_gain =
          report->heads ? std::min(report->min_gain, gain) : gain;
      report->max_gain =
          report->heads ? std::max(report->max_gain, gain) : gain;
      report->mean_gain =
          (report->mean_gain * report->heads + gain) / (report->heads + 1);
      ++report->heads;
    }
  }
  return absl::OkStatus();
}

absl::Status FitLayerKeyGains(const VqCodec& codec, int layer,
                              const float* fit_keys, int64_t fit_tokens,
                              const float* held_keys, int64_t held_tokens,
                              double strength, CodebookSet* set,
                              KeyGainReport* report) {
  absl::StatusOr<LayerKeyGainFit> fit = MeasureLayerKeyGains(
      codec, layer, fit_keys, fit_tokens, held_keys, held_tokens);
  if (!fit.ok()) return fit.status();
  return SetLayerKeyGains(*fit, strength, set, report);
}

double AutoKeyGainStrength(double mean_gain) {
  if (!(mean_gain > 1.0)) return 1.0;
  return std::clamp(kAutoKeyGainExcess / (mean_gain - 1.0), 1.0, 2.0);
}

double RefinedKeyGainStrength(double max_gain, double set_strength,
                              double target_gain) {
  if (!(max_gain > 1.0)) return set_strength;
  return std::clamp((target_gain - 1.0) / (max_gain - 1.0), set_strength,
                    std::max(set_strength, 10.0));
}

}  // namespace vqkv::tools
