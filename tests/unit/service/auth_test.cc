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

TEST(TokenStoreTest, ConstantTimeEquals) {
  EXPECT_TRUE(ConstantTimeEquals("alpha-token-1", "alpha-token-1"));
  EXPECT_FALSE(ConstantTimeEquals("alpha-token-1", "alpha-token-2"));
  EXPECT_FALSE(ConstantTimeEquals("alpha-token-1", "Alpha-token-1"));
  // Prefixes and extensions differ in length: never equal, even when the
  // cyclic read of the secret would match byte for byte.
  EXPECT_FALSE(ConstantTimeEquals("alpha-token-1", "alpha-token-"));
  EXPECT_FALSE(ConstantTimeEquals("alpha-token-1", "alpha-token-1x"));
  EXPECT_FALSE(ConstantTimeEquals("abab", "ab"));
  EXPECT_FALSE(ConstantTimeEquals("ab", "abab"));
  EXPECT_FALSE(ConstantTimeEquals("alpha-token-1", ""));
  EXPECT_FALSE(ConstantTimeEquals("", "x"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

TEST(TokenStoreTest, EveryTokenOfManyAuthenticates) {
  // Authenticate scans all tokens (no map lookup): each still finds its own
  // tenant, and near misses fail.
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text += "token-number-" + std::to_string(i) + " tenant" +
            std::to_string(i % 7) + "\n";
  }
  auto store = TokenStore::Parse(text, "t");
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 0; i < 200; ++i) {
    auto t =
        store->Authenticate(true, "Bearer token-number-" + std::to_string(i));
    ASSERT_TRUE(t.ok()) << i;
    EXPECT_EQ(*t, "tenant" + std::to_string(i % 7));
  }
  EXPECT_FALSE(store->Authenticate(true, "Bearer token-number-200").ok());
  EXPECT_FALSE(store->Authenticate(true, "Bearer token-number-").ok());
}

}  // namespace
}  // namespace vqkv::service
