// The Prometheus text of service/metrics.h.
#include "service/metrics.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace vqkv::service {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, RendersCountersAndHistograms) {
  Metrics m;
  m.RecordRpc("Lookup", 0, 0.0003);
  m.RecordRpc("Lookup", 0, 3.0);
  m.RecordRpc("PutBlocks", 8, 0.01);
  m.RecordHits("lookup", 3, 1, 48, 16);
  const std::string text = m.Render();
  EXPECT_THAT(
      text, HasSubstr("vqkv_requests_total{method=\"Lookup\",code=\"OK\"} 2"));
  EXPECT_THAT(text,
              HasSubstr("vqkv_errors_total{code=\"RESOURCE_EXHAUSTED\"} 1"));
  EXPECT_THAT(text, HasSubstr("vqkv_request_duration_seconds_bucket{method="
                              "\"Lookup\",le=\"0.0005\"} 1"));
  EXPECT_THAT(text, HasSubstr("vqkv_request_duration_seconds_bucket{method="
                              "\"Lookup\",le=\"+Inf\"} 2"));
  EXPECT_THAT(text, HasSubstr("vqkv_token_misses_total{op=\"lookup\"} 16"));
}

TEST(MetricsTest, UnknownStatusCodesAreLabelledUnknown) {
  Metrics m;
  m.RecordRpc("Lookup", 99, 0.001);
  EXPECT_THAT(m.Render(), HasSubstr("vqkv_errors_total{code=\"UNKNOWN\"} 1"));
}

TEST(MetricsTest, WriterFormatsFamiliesAndSamples) {
  std::string out;
  AppendMetric(&out, "vqkv_up", "gauge", "1 while serving.", 1);
  AppendMetricSample(&out, "vqkv_tier_bytes", "tier=\"disk\"", uint64_t{7});
  EXPECT_EQ(out,
            "# HELP vqkv_up 1 while serving.\n# TYPE vqkv_up gauge\n"
            "vqkv_up 1\nvqkv_tier_bytes{tier=\"disk\"} 7\n");
}

}  // namespace
}  // namespace vqkv::service
