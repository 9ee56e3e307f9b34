// tests/testing/mini_test.h judged by its own output: CMake runs this program
// and passes it only when the closing line counts exactly the outcomes below
// (one pass, three failures, one skip) and the messages carry the values.
#include <string>
#include <vector>

#include "tests/testing/mini_test.h"

namespace {

int reached_after_assert = 0;

TEST(MiniTest, Passes) {
  EXPECT_EQ(2 + 2, 4);
  EXPECT_LT(1, 2) << "not printed";
  ASSERT_TRUE(true);
}

TEST(MiniTest, ExpectFailureContinues) {
  EXPECT_EQ(6 * 7, 41) << "the answer";
  EXPECT_EQ(std::vector<int>{1}, std::vector<int>{2});
  reached_after_assert += 1;  // EXPECT does not return
}

TEST(MiniTest, AssertFailureReturns) {
  SCOPED_TRACE("inside the trace");
  ASSERT_LT(5, 3) << "five is not below three";
  reached_after_assert += 100;  // must not run
}

TEST(MiniTest, CountsWhatRan) { ASSERT_EQ(reached_after_assert, 0); }

TEST(MiniTest, Skips) {
  GTEST_SKIP() << "skipped on purpose";
  reached_after_assert += 1000;  // must not run
}

}  // namespace

VQKV_MINI_TEST_MAIN()
