#include "base/parallel.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace vqkv::base {
namespace {

TEST(RunPartsTest, CallsEveryPartOnceAndPartZeroOnTheCaller) {
  for (int n : {1, 2, 5}) {
    std::vector<std::atomic<int>> calls(n);
    std::vector<std::thread::id> ids(n);
    RunParts(n, [&](int part) {
      ++calls[part];
      ids[part] = std::this_thread::get_id();
    });
    for (int i = 0; i < n; ++i) EXPECT_EQ(calls[i].load(), 1) << n << " " << i;
    EXPECT_EQ(ids[0], std::this_thread::get_id()) << n;
    for (int i = 1; i < n; ++i) EXPECT_NE(ids[i], ids[0]) << n << " " << i;
  }
}

TEST(RunPartsTest, ZeroPartsStillRunsPartZero) {
  int calls = 0;
  RunParts(0, [&](int part) {
    EXPECT_EQ(part, 0);
    ++calls;
  });
  EXPECT_EQ(calls, 1);
}

TEST(RunPartsTest, ReturnsOnlyAfterEveryPartFinished) {
  std::atomic<int> done{0};
  RunParts(4, [&](int part) {
    if (part != 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ++done;
  });
  EXPECT_EQ(done.load(), 4);
}

}  // namespace
}  // namespace vqkv::base
