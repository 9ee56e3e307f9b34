// Namespace ids and request validation (service/validate.h).
#include "service/validate.h"

#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/block.h"

namespace vqkv::service {
namespace {

using ::testing::HasSubstr;

v1::Namespace Ns() {
  v1::Namespace ns;
  ns.set_model_id("m");
  ns.set_codec("fp16");
  ns.set_codec_id(1);
  ns.set_block_tokens(4);
  ns.set_layers(1);
  ns.set_kv_heads(1);
  ns.set_head_dim(4);
  ns.set_dtype(v1::DTYPE_BFLOAT16);
  return ns;
}

TEST(NamespaceTest, IdDependsOnTenantAndEveryField) {
  const v1::Namespace ns = Ns();
  const storage::NamespaceId base = ComputeNamespaceId("alice", ns);
  EXPECT_EQ(base, ComputeNamespaceId("alice", ns));  // deterministic
  EXPECT_NE(base, ComputeNamespaceId("bob", ns));
  EXPECT_NE(base, ComputeNamespaceId("", ns));
  int differing = 0;
  for (int field = 0; field < 10; ++field) {
    v1::Namespace o = ns;
    switch (field) {
      case 0:
        o.set_model_id("m2");
        break;
      case 1:
        o.set_weight_revision("r");
        break;
      case 2:
        o.set_codec("fp16x");
        break;
      case 3:
        o.set_codec_id(2);
        break;
      case 4:
        o.set_codebook_hash(1);
        break;
      case 5:
        o.set_block_tokens(5);
        break;
      case 6:
        o.set_layers(2);
        break;
      case 7:
        o.set_kv_heads(2);
        break;
      case 8:
        o.set_head_dim(8);
        break;
      case 9:
        o.set_dtype(v1::DTYPE_FLOAT16);
        break;
    }
    if (ComputeNamespaceId("alice", o) != base) ++differing;
  }
  EXPECT_EQ(differing, 10);
  // Length prefixes keep ("ab","c") and ("a","bc") apart.
  v1::Namespace a = ns, b = ns;
  a.set_model_id("ab");
  a.set_weight_revision("c");
  b.set_model_id("a");
  b.set_weight_revision("bc");
  EXPECT_NE(ComputeNamespaceId("t", a), ComputeNamespaceId("t", b));
}

TEST(ValidateTest, BlockAgainstNamespace) {
  const v1::Namespace ns = Ns();
  ASSERT_TRUE(ValidateNamespace(ns, true).ok());
  auto codec = Fp16Codec::Create(KvLayout{1, 1, 4});
  std::vector<float> k(5 * 4, 0.5f), v(5 * 4, -0.25f);
  auto four = EncodeBlock(**codec, k.data(), v.data(), 4, BlockOptions{});
  auto five = EncodeBlock(**codec, k.data(), v.data(), 5, BlockOptions{});
  ASSERT_TRUE(four.ok() && five.ok());
  auto as_view = [](const std::vector<uint8_t>& b) {
    return absl::string_view(reinterpret_cast<const char*>(b.data()), b.size());
  };
  EXPECT_TRUE(ValidateBlock(ns, as_view(*four), 0).ok());
  absl::StatusOr<BlockHeader> r = ValidateBlock(ns, as_view(*five), 3);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("blocks[3]"));
  std::vector<uint8_t> flipped = *four;
  ASSERT_GT(flipped.size(), 70u);
  flipped[70] ^= 1;
  EXPECT_EQ(ValidateBlock(ns, as_view(flipped), 0).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseBlockHash(std::string(17, 'x'), "hashes", 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ParseBlockHash(std::string(16, 'x'), "hashes", 2).ok());
  EXPECT_EQ(ValidateCodebook(0, "x", 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateCodebook(5, "not a codebook file", 0).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace vqkv::service
