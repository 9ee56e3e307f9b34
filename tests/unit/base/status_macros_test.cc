#include "base/status_macros.h"

#include <memory>
#include <string>

#include "gtest/gtest.h"

namespace vqkv::base {
namespace {

absl::StatusOr<std::unique_ptr<int>> MakeInt(bool ok, int* calls) {
  ++*calls;
  if (!ok) return absl::NotFoundError("no int");
  return std::make_unique<int>(7);
}

absl::Status UseReturnIfError(bool ok, int* calls, bool* reached_end) {
  VQKV_RETURN_IF_ERROR(MakeInt(ok, calls).status());
  *reached_end = true;
  return absl::OkStatus();
}

absl::StatusOr<int> UseAssignOrReturn(bool ok, int* calls) {
  VQKV_ASSIGN_OR_RETURN(std::unique_ptr<int> p, MakeInt(ok, calls));
  int doubled = 0;
  VQKV_ASSIGN_OR_RETURN(doubled, absl::StatusOr<int>(*p * 2));
  return doubled;
}

TEST(StatusMacrosTest, ReturnIfErrorPassesTheErrorThroughOnce) {
  int calls = 0;
  bool reached = false;
  const absl::Status s = UseReturnIfError(false, &calls, &reached);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no int");
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(reached);
  EXPECT_TRUE(UseReturnIfError(true, &calls, &reached).ok());
  EXPECT_TRUE(reached);
}

TEST(StatusMacrosTest, AssignOrReturnMovesTheValueOrReturnsTheError) {
  int calls = 0;
  auto bad = UseAssignOrReturn(false, &calls);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kNotFound);
  auto good = UseAssignOrReturn(true, &calls);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 14);
  EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace vqkv::base
