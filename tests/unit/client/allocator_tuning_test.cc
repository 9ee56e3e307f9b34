#include "client/allocator_tuning.h"

#include <malloc.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "base/malloc.h"
#include "gtest/gtest.h"

namespace vqkv::client {
namespace {

using ::vqkv::base::kGlibcMalloc;

TEST(AllocatorTuningTest, SaysWhenItCannotTune) {
  const absl::Status s = TuneAllocatorForLargeMessages();
  if (kGlibcMalloc) {
    EXPECT_TRUE(s.ok()) << s;
  } else {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  }
}

TEST(AllocatorTuningTest, RefusesThresholdsPastAnInt) {
  if (!kGlibcMalloc) GTEST_SKIP() << "malloc is replaced (sanitizer build)";
  AllocatorTuning past_int;
  past_int.trim_bytes = uint64_t{1} << 40;
  const absl::Status s = TuneAllocatorForLargeMessages(past_int);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("fit an int"), absl::string_view::npos) << s;
}

// After tuning, a large allocation comes from the heap rather than a
// mapping of its own, and freeing it keeps the memory for the next one:
// what saves a loading process its page faults.
TEST(AllocatorTuningTest, LargeBlocksStayInTheHeap) {
  if (!kGlibcMalloc) GTEST_SKIP() << "malloc is replaced (sanitizer build)";
  ASSERT_TRUE(TuneAllocatorForLargeMessages().ok());
  constexpr size_t kBytes = size_t{4} << 20;
  const struct mallinfo2 before = mallinfo2();
  void* p = std::malloc(kBytes);
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, kBytes);
  const struct mallinfo2 held = mallinfo2();
  EXPECT_EQ(held.hblks, before.hblks) << "the block was mmap'd";
  std::free(p);
  const struct mallinfo2 after = mallinfo2();
  EXPECT_GE(after.arena, held.arena) << "the heap was trimmed on free";
  EXPECT_GE(after.fordblks, kBytes) << "the freed block was not kept";
}

}  // namespace
}  // namespace vqkv::client
