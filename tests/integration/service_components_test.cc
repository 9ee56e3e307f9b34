// In-process tests of vqkv-server's pieces: byte sizes, YAML config, token
// files, namespace ids and block validation.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/baselines/fp16_codec.h"
#include "kernels/block.h"
#include "service/auth.h"
#include "service/config.h"
#include "service/metrics.h"
#include "service/validate.h"

namespace vqkv::service {
namespace {

using ::testing::HasSubstr;

TEST(ParseBytesTest, UnitsAndErrors) {
  EXPECT_EQ(*ParseBytes("1048576"), 1048576u);
  EXPECT_EQ(*ParseBytes("64MiB"), 64u << 20);
  EXPECT_EQ(*ParseBytes("64M"), 64u << 20);
  EXPECT_EQ(*ParseBytes("1.5GiB"), 3u << 29);
  EXPECT_EQ(*ParseBytes("10GB"), 10'000'000'000u);
  EXPECT_EQ(*ParseBytes(" 2 KiB "), 2048u);
  EXPECT_FALSE(ParseBytes("").ok());
  EXPECT_FALSE(ParseBytes("-1").ok());
  EXPECT_FALSE(ParseBytes("12 parsecs").ok());
  EXPECT_FALSE(ParseBytes("0.5").ok());  // fractional bytes
}

TEST(ConfigTest, YamlAppliesAndRejectsUnknownKeys) {
  ServerConfig c;
  ASSERT_TRUE(ApplyYamlConfig(R"(
listen: 0.0.0.0:6000
data_dir: /var/lib/vqkv
memory_bytes: 2GiB
durability: sync
write_policy: write_through
metrics_listen: 127.0.0.1:9100
max_message_bytes: 16MiB
ttl_seconds: 3600
tenants:
  default_quota_bytes: 1GiB
  quotas:
    alice: 10GiB
)",
                              "test", &c)
                  .ok());
  EXPECT_EQ(c.listen, "0.0.0.0:6000");
  EXPECT_EQ(c.memory_bytes, uint64_t{2} << 30);
  EXPECT_EQ(c.durability, storage::Durability::kSync);
  EXPECT_EQ(c.write_policy, storage::WritePolicy::kWriteThrough);
  EXPECT_EQ(c.max_message_bytes, 16u << 20);
  EXPECT_EQ(c.ttl_seconds, 3600u);
  EXPECT_EQ(c.QuotaFor("alice"), uint64_t{10} << 30);
  EXPECT_EQ(c.QuotaFor("bob"), uint64_t{1} << 30);
  EXPECT_TRUE(c.Validate().ok());

  absl::Status s = ApplyYamlConfig("memory_byts: 1GiB\n", "f.yaml", &c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("memory_byts"));
  s = ApplyYamlConfig("durability: maybe\n", "f.yaml", &c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = ApplyYamlConfig("listen: [unclosed\n", "f.yaml", &c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
}

TEST(ConfigTest, FlagsOverrideTheConfigFile) {
  const std::string path =
      (std::filesystem::temp_directory_path() / "vqkv-config-test.yaml")
          .string();
  std::ofstream(path) << "listen: 127.0.0.1:7000\nmemory_bytes: 1MiB\n";
  std::string a0 = "vqkv-server", a1 = "--config", a2 = path,
              a3 = "--memory-bytes", a4 = "8MiB";
  char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), a4.data()};
  bool exit_now = true;
  auto c = ParseCommandLine(5, argv, &exit_now);
  std::filesystem::remove(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(exit_now);
  EXPECT_EQ(c->listen, "127.0.0.1:7000");  // from the file
  EXPECT_EQ(c->memory_bytes, 8u << 20);    // the flag wins
  EXPECT_EQ(c->data_dir, "./vqkv-data");   // default

  std::string b1 = "--no-such-flag";
  char* bad[] = {a0.data(), b1.data()};
  EXPECT_FALSE(ParseCommandLine(2, bad, &exit_now).ok());
}

TEST(ConfigTest, DefaultsAreTheEmbeddedLocalServer) {
  std::string a0 = "vqkv-server";
  char* argv[] = {a0.data()};
  bool exit_now = false;
  auto c = ParseCommandLine(1, argv, &exit_now);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->listen, "127.0.0.1:50051");
  EXPECT_EQ(c->data_dir, "./vqkv-data");
  EXPECT_TRUE(c->tokens_file.empty());
  EXPECT_EQ(c->max_message_bytes, 64u << 20);
}

TEST(ConfigTest, MaxLeaseMsFromFlagAndYaml) {
  ServerConfig c;
  EXPECT_EQ(c.max_lease_ms, 10000u);  // the default
  ASSERT_TRUE(ApplyYamlConfig("max_lease_ms: 2500\n", "test", &c).ok());
  EXPECT_EQ(c.max_lease_ms, 2500u);
  EXPECT_TRUE(c.Validate().ok());
  c.max_lease_ms = ServerConfig::kMaxLeaseMsLimit + 1;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);

  std::string a0 = "vqkv-server", a1 = "--max-lease-ms", a2 = "250";
  char* argv[] = {a0.data(), a1.data(), a2.data()};
  bool exit_now = false;
  auto parsed = ParseCommandLine(3, argv, &exit_now);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->max_lease_ms, 250u);
  std::string b2 = "soon";
  char* bad[] = {a0.data(), a1.data(), b2.data()};
  EXPECT_FALSE(ParseCommandLine(3, bad, &exit_now).ok());
  std::string c2 = "3600001";
  char* too_long[] = {a0.data(), a1.data(), c2.data()};
  EXPECT_FALSE(ParseCommandLine(3, too_long, &exit_now).ok());
}

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

}  // namespace
}  // namespace vqkv::service
