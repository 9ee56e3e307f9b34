// Bearer token files and authentication (service/auth.h).
#include "service/auth.h"

#include <string>

#include "gtest/gtest.h"

namespace vqkv::service {
namespace {

TEST(TokenStoreTest, LineAndYamlFormats) {
  auto lines = TokenStore::Parse(
      "# comment\n\nalpha-token-1 alice  # trailing\nbeta-token-22\tbob\n",
      "t");
  ASSERT_TRUE(lines.ok()) << lines.status();
  EXPECT_EQ(lines->size(), 2u);
  EXPECT_EQ(*lines->Authenticate(true, "Bearer alpha-token-1"), "alice");
  EXPECT_EQ(*lines->Authenticate(true, "bearer beta-token-22"), "bob");
  EXPECT_EQ(lines->Authenticate(true, "Bearer wrong-token").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(lines->Authenticate(false, "").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(lines->Authenticate(true, "alpha-token-1").status().code(),
            absl::StatusCode::kUnauthenticated);

  auto yaml = TokenStore::Parse(
      "tenants:\n  alice: alpha-token-1\n  bob: [beta-token-22, "
      "beta-token-33]\n",
      "t");
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(yaml->size(), 3u);
  EXPECT_EQ(*yaml->Authenticate(true, "Bearer beta-token-33"), "bob");

  EXPECT_FALSE(TokenStore::Parse("short alice\n", "t").ok());
  EXPECT_FALSE(TokenStore::Parse("good-token-1 bad/tenant\n", "t").ok());
  EXPECT_FALSE(
      TokenStore::Parse("same-token-1 alice\nsame-token-1 bob\n", "t").ok());
  EXPECT_FALSE(TokenStore::Parse("only-one-field\n", "t").ok());
  EXPECT_FALSE(TokenStore::Parse("# nothing\n", "t").ok());

  TokenStore off;
  EXPECT_FALSE(off.enabled());
  EXPECT_EQ(*off.Authenticate(false, ""), "");
}

}  // namespace
}  // namespace vqkv::service
