// tools/key_gain_fit.h: the gain that undoes the codebooks' shrinkage of
// held-out keys, averaged over the whitened directions of key space.
#include "tools/key_gain_fit.h"

#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/fitted_codebook_set.h"

namespace vqkv::tools {
namespace {

// Few, small stages: decoded keys are strongly shrunk toward the mean.
VqConfig CoarseConfig() {
  VqConfig cfg;
  cfg.key_stages = 2;
  cfg.key_bits = 3;
  cfg.value_stages = 1;
  cfg.value_bits = 2;
  return cfg;
}

// A codec whose layer 0 is fitted on `keys` (as keys and values).
std::unique_ptr<VqCodec> CoarseCodec(const KvLayout& layout,
                                     const std::vector<float>& keys,
                                     int64_t tokens) {
  absl::StatusOr<std::unique_ptr<VqCodec>> codec =
      VqCodec::Create(layout, CoarseConfig());
  EXPECT_TRUE(codec.ok()) << codec.status();
  EXPECT_TRUE((*codec)->FitLayer(0, keys.data(), keys.data(), tokens, {}).ok());
  return *std::move(codec);
}

// Least-squares slope of y_d on x_d for one dimension d of head h.
double Slope(const std::vector<float>& k, const std::vector<float>& r,
             const float* centre, int64_t n, int H, int D, int h, int d) {
  double xx = 0, xy = 0;
  for (int64_t t = 0; t < n; ++t) {
    const double x = k[(t * H + h) * D + d] - centre[d];
    const double y = r[(t * H + h) * D + d] - centre[d];
    xx += x * x;
    xy += x * y;
  }
  return xy / xx;
}

TEST(KeyGainFitTest, UndoesTheShrinkageOfHeldOutKeys) {
  const KvLayout layout{1, 2, 8};
  const int H = layout.kv_heads, D = layout.head_dim;
  const int64_t fit = 400, held = 600;
  const std::vector<float> fit_keys = testing::KeyLikeVectors(fit * H, D, 3);
  const std::vector<float> held_keys = testing::KeyLikeVectors(held * H, D, 4);
  std::unique_ptr<VqCodec> codec = CoarseCodec(layout, fit_keys, fit);
  std::vector<float> decoded(held_keys.size());
  ASSERT_TRUE(
      codec->ReconstructLayerKeys(0, held_keys.data(), held, decoded.data())
          .ok());
  CodebookSet set = codec->codebooks();
  KeyGainReport report;
  ASSERT_TRUE(FitLayerKeyGains(*codec, 0, fit_keys.data(), fit,
                               held_keys.data(), held, 1.0, &set, &report)
                  .ok());
  ASSERT_TRUE(set.has_key_gains());
  EXPECT_EQ(report.heads, H);
  for (int h = 0; h < H; ++h) {
    const float* c = set.key_centre(0, h);
    for (int d = 0; d < D; ++d) {
      double mean = 0;
      for (int64_t t = 0; t < fit; ++t) mean += fit_keys[(t * H + h) * D + d];
      EXPECT_NEAR(c[d], mean / fit, 1e-5) << "the centre is the fitted mean";
    }
    // Every direction is shrunk (slope < 1); the gain is above 1 and lies
    // between the inverses of the largest and smallest slopes.
    double lo = 1e9, hi = 0;
    for (int d = 0; d < D; ++d) {
      const double s = Slope(held_keys, decoded, c, held, H, D, h, d);
      EXPECT_LT(s, 1.0) << "head " << h << " dim " << d;
      lo = std::min(lo, s);
      hi = std::max(hi, s);
    }
    const float g = set.key_gain(0, h);
    EXPECT_GT(g, 1.0f);
    EXPECT_GE(g, 1.0 / hi - 0.02) << "head " << h;
    EXPECT_LE(g, 1.0 / lo + 0.02) << "head " << h;
    EXPECT_GE(g, report.min_gain - 1e-6);
    EXPECT_LE(g, report.max_gain + 1e-6);
  }
  // On the keys the codebooks were fitted on they shrink less: a smaller
  // gain, which is why the gains are fitted on held-out keys.
  CodebookSet in_sample = codec->codebooks();
  ASSERT_TRUE(FitLayerKeyGains(*codec, 0, fit_keys.data(), fit, fit_keys.data(),
                               fit, 1.0, &in_sample, nullptr)
                  .ok());
  for (int h = 0; h < H; ++h) {
    EXPECT_LT(in_sample.key_gain(0, h), set.key_gain(0, h)) << "head " << h;
  }
  // Strength scales the correction: 1 + s (g - 1); 0 leaves every gain 1.
  for (double strength : {0.0, 2.5}) {
    CodebookSet scaled = codec->codebooks();
    ASSERT_TRUE(FitLayerKeyGains(*codec, 0, fit_keys.data(), fit,
                                 held_keys.data(), held, strength, &scaled,
                                 nullptr)
                    .ok());
    for (int h = 0; h < H; ++h) {
      EXPECT_NEAR(scaled.key_gain(0, h),
                  1.0 + strength * (set.key_gain(0, h) - 1.0), 1e-5)
          << "strength " << strength << " head " << h;
    }
  }
  // One measure serves every strength (vqkv calibrate sets the gains of
  // layers it does not refine from their first measure): the same gains,
  // bit for bit, as a fit at that strength.
  absl::StatusOr<LayerKeyGainFit> measured = MeasureLayerKeyGains(
      *codec, 0, fit_keys.data(), fit, held_keys.data(), held);
  ASSERT_TRUE(measured.ok()) << measured.status();
  ASSERT_EQ(measured->gain.size(), static_cast<size_t>(H));
  for (double strength : {1.0, 1.7}) {
    CodebookSet fitted = codec->codebooks(), from_measure = fitted;
    ASSERT_TRUE(FitLayerKeyGains(*codec, 0, fit_keys.data(), fit,
                                 held_keys.data(), held, strength, &fitted,
                                 nullptr)
                    .ok());
    ASSERT_TRUE(
        SetLayerKeyGains(*measured, strength, &from_measure, nullptr).ok());
    for (int h = 0; h < H; ++h) {
      EXPECT_EQ(from_measure.key_gain(0, h), fitted.key_gain(0, h));
      for (int d = 0; d < D; ++d) {
        EXPECT_EQ(from_measure.key_centre(0, h)[d], fitted.key_centre(0, h)[d]);
      }
    }
  }
  // A head without a measurable gain keeps 1 at any strength.
  LayerKeyGainFit none = *measured;
  none.gain[1] = std::nan("");
  CodebookSet with_none = codec->codebooks();
  ASSERT_TRUE(SetLayerKeyGains(none, 3.0, &with_none, nullptr).ok());
  EXPECT_EQ(with_none.key_gain(0, 1), 1.0f);
  EXPECT_GT(with_none.key_gain(0, 0), 1.0f);
}

TEST(KeyGainFitTest, AutoStrengthScalesTowardTheTargetMeanWithinOneAndTwo) {
  // Small fitted gains are doubled, large ones kept, between them the mean
  // lands on 1 + kAutoKeyGainExcess.
  EXPECT_EQ(AutoKeyGainStrength(1.0315), 2.0);
  EXPECT_EQ(AutoKeyGainStrength(1.0662), 1.0);
  const double s = AutoKeyGainStrength(1.05);
  EXPECT_GT(s, 1.0);
  EXPECT_LT(s, 2.0);
  EXPECT_NEAR(1.0 + s * 0.05, 1.0 + kAutoKeyGainExcess, 1e-12);
  // No shrinkage measured (or an expansion): nothing to scale.
  EXPECT_EQ(AutoKeyGainStrength(1.0), 1.0);
  EXPECT_EQ(AutoKeyGainStrength(0.98), 1.0);
  EXPECT_EQ(AutoKeyGainStrength(std::nan("")), 1.0);
}

// A refined layer: its largest gain scaled to the target (1.10 by
// default), never below the set's strength nor past 10.
TEST(KeyGainFitTest, RefinedStrengthScalesTheLargestGainToTheTarget) {
  EXPECT_NEAR(RefinedKeyGainStrength(1.04, 1.0), 2.5, 1e-9);
  EXPECT_NEAR(1.0 + RefinedKeyGainStrength(1.02, 1.0) * 0.02,
              1.0 + kRefinedKeyGainExcess, 1e-12);
  EXPECT_EQ(RefinedKeyGainStrength(1.2, 1.0), 1.0);
  EXPECT_EQ(RefinedKeyGainStrength(1.04, 3.0), 3.0);
  EXPECT_EQ(RefinedKeyGainStrength(1.001, 1.0), 10.0);
  EXPECT_EQ(RefinedKeyGainStrength(0.99, 1.5), 1.5);
  // Another target (--key-refine-gain).
  EXPECT_NEAR(RefinedKeyGainStrength(1.04, 1.0, 1.07), 1.75, 1e-9);
  EXPECT_EQ(RefinedKeyGainStrength(1.04, 2.0, 1.07), 2.0);
  EXPECT_EQ(RefinedKeyGainStrength(1.04, 1.0, 1.0), 1.0);
}

TEST(KeyGainFitTest, BadArguments) {
  const KvLayout layout{2, 2, 8};
  const std::vector<float> keys = testing::KeyLikeVectors(100 * 2, 8, 5);
  std::unique_ptr<VqCodec> codec = CoarseCodec(layout, keys, 100);
  absl::StatusOr<CodebookSet> set =
      CodebookSet::Create(*VqCodec::ResolveConfig(layout, CoarseConfig()));
  ASSERT_TRUE(set.ok());
  EXPECT_EQ(FitLayerKeyGains(*codec, 1, keys.data(), 50, keys.data() + 800, 50,
                             1.0, &*set, nullptr)
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FitLayerKeyGains(*codec, 0, keys.data(), 50, keys.data() + 800, 0,
                             1.0, &*set, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FitLayerKeyGains(*codec, 0, keys.data(), 50, keys.data() + 800, 50,
                             -1.0, &*set, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MeasureLayerKeyGains(*codec, 0, keys.data(), 0, keys.data(), 50)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<LayerKeyGainFit> fit =
      MeasureLayerKeyGains(*codec, 0, keys.data(), 50, keys.data() + 800, 50);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(SetLayerKeyGains(*fit, 10.5, &*set, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(set->has_key_gains());
}

}  // namespace
}  // namespace vqkv::tools
