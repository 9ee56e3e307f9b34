#include "base/logging.h"

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace vqkv::base {
namespace {

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetLogSink([this](LogSeverity s, absl::string_view line) {
      lines_.emplace_back(s, std::string(line));
    });
  }
  void TearDown() override {
    SetLogSink(nullptr);
    SetMinLogSeverity(LogSeverity::kInfo);
  }
  std::vector<std::pair<LogSeverity, std::string>> lines_;
};

TEST_F(LoggingTest, LineCarriesSeverityPlaceAndMessage) {
  VQKV_LOG(kWarning) << "disk fault " << 42;
  ASSERT_EQ(lines_.size(), 1u);
  EXPECT_EQ(lines_[0].first, LogSeverity::kWarning);
  const std::string& line = lines_[0].second;
  EXPECT_EQ(line.rfind("vqkv W ", 0), 0u) << line;
  EXPECT_NE(line.find("tests/unit/base/logging_test.cc:"), std::string::npos)
      << line;
  EXPECT_NE(line.find("] disk fault 42"), std::string::npos) << line;
}

TEST_F(LoggingTest, MinSeverityDropsLinesWithoutFormatting) {
  SetMinLogSeverity(LogSeverity::kError);
  int formatted = 0;
  auto count = [&] { return ++formatted; };
  VQKV_LOG(kInfo) << count();
  VQKV_LOG(kWarning) << count();
  EXPECT_TRUE(lines_.empty());
  EXPECT_EQ(formatted, 0);
  VQKV_LOG(kError) << count();
  ASSERT_EQ(lines_.size(), 1u);
  EXPECT_EQ(formatted, 1);
}

TEST_F(LoggingTest, SetLogSinkReturnsThePreviousOne) {
  LogSink mine = SetLogSink(nullptr);
  EXPECT_TRUE(static_cast<bool>(mine));
  LogSink none = SetLogSink(std::move(mine));
  EXPECT_FALSE(static_cast<bool>(none));
}

}  // namespace
}  // namespace vqkv::base
