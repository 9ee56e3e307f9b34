// Byte sizes, the YAML config file and the command line of vqkv-server.
#include "service/config.h"

#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/tiered_store.h"

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
allow_insecure_public: true
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
  EXPECT_EQ(c.store.memory_bytes, uint64_t{2} << 30);
  EXPECT_EQ(c.store.durability, storage::Durability::kSync);
  EXPECT_EQ(c.store.write_policy, storage::WritePolicy::kWriteThrough);
  EXPECT_EQ(c.service.max_message_bytes, 16u << 20);
  EXPECT_EQ(c.store.ttl, absl::Seconds(3600));
  // The quotas land in the store's options (TieredStore owns the lookup).
  EXPECT_EQ(c.store.tenant_quotas.at("alice"), uint64_t{10} << 30);
  EXPECT_FALSE(c.store.tenant_quotas.contains("bob"));
  EXPECT_EQ(c.store.default_tenant_quota, uint64_t{1} << 30);
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
  EXPECT_EQ(c->listen, "127.0.0.1:7000");       // from the file
  EXPECT_EQ(c->store.memory_bytes, 8u << 20);   // the flag wins
  EXPECT_EQ(c->store.data_dir, "./vqkv-data");  // default

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
  EXPECT_EQ(c->store.data_dir, "./vqkv-data");
  EXPECT_TRUE(c->tokens_file.empty());
  EXPECT_EQ(c->service.max_message_bytes, 64u << 20);
}

TEST(ConfigTest, MaxLeaseMsFromFlagAndYaml) {
  ServerConfig c;
  EXPECT_EQ(c.service.max_lease, absl::Milliseconds(10000));  // the default
  ASSERT_TRUE(ApplyYamlConfig("max_lease_ms: 2500\n", "test", &c).ok());
  EXPECT_EQ(c.service.max_lease, absl::Milliseconds(2500));
  EXPECT_TRUE(c.Validate().ok());
  c.service.max_lease = absl::Milliseconds(ServerConfig::kMaxLeaseMsLimit + 1);
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);

  std::string a0 = "vqkv-server", a1 = "--max-lease-ms", a2 = "250";
  char* argv[] = {a0.data(), a1.data(), a2.data()};
  bool exit_now = false;
  auto parsed = ParseCommandLine(3, argv, &exit_now);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->service.max_lease, absl::Milliseconds(250));
  std::string b2 = "soon";
  char* bad[] = {a0.data(), a1.data(), b2.data()};
  EXPECT_FALSE(ParseCommandLine(3, bad, &exit_now).ok());
  std::string c2 = "3600001";
  char* too_long[] = {a0.data(), a1.data(), c2.data()};
  EXPECT_FALSE(ParseCommandLine(3, too_long, &exit_now).ok());
}

TEST(ConfigTest, DefaultsComeFromTheLowerLayersOptions) {
  // One source per setting: the store's and the service's option structs.
  const ServerConfig c;
  const storage::TieredStoreOptions store;
  const KvServiceOptions service;
  EXPECT_EQ(c.store.memory_bytes, store.memory_bytes);
  EXPECT_EQ(c.store.disk_bytes, store.disk_bytes);
  EXPECT_EQ(c.service.max_message_bytes, service.max_message_bytes);
  EXPECT_EQ(c.service.workers, 0);  // auto
  EXPECT_EQ(c.service.max_lease, service.max_lease);
  EXPECT_EQ(c.store.data_dir, "./vqkv-data");  // the server's own default
}

TEST(ConfigTest, DiskBytesZeroIsUnlimited) {
  // docs/SERVICE.md: 0 = unlimited, from the flag and from YAML.
  std::string a0 = "vqkv-server", a1 = "--disk-bytes", a2 = "0";
  char* argv[] = {a0.data(), a1.data(), a2.data()};
  bool exit_now = false;
  auto c = ParseCommandLine(3, argv, &exit_now);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->store.disk_bytes, 0u);
  EXPECT_EQ(StoreDiskBytes(c->store.disk_bytes),
            std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(StoreDiskBytes(uint64_t{1} << 30), uint64_t{1} << 30);

  ServerConfig y;
  ASSERT_TRUE(ApplyYamlConfig("disk_bytes: 0\n", "test", &y).ok());
  EXPECT_EQ(y.store.disk_bytes, 0u);
  EXPECT_TRUE(y.Validate().ok());
}

TEST(ConfigTest, LoopbackAddresses) {
  EXPECT_TRUE(IsLoopbackListen("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackListen("127.10.0.3:0"));
  EXPECT_TRUE(IsLoopbackListen("localhost:50051"));
  EXPECT_TRUE(IsLoopbackListen("[::1]:50051"));
  EXPECT_TRUE(IsLoopbackListen("unix:/run/vqkv.sock"));
  EXPECT_FALSE(IsLoopbackListen("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackListen("[::]:50051"));
  EXPECT_FALSE(IsLoopbackListen(":50051"));
  EXPECT_FALSE(IsLoopbackListen("10.1.2.3:50051"));
  EXPECT_FALSE(IsLoopbackListen("128.0.0.1:50051"));
  EXPECT_FALSE(IsLoopbackListen("127.0.0.1.example.com:50051"));
  EXPECT_FALSE(IsLoopbackListen("cache.example.com:50051"));
}

TEST(ConfigTest, AuthOffOnAPublicAddressNeedsTheExplicitFlag) {
  std::string a0 = "vqkv-server", a1 = "--listen", a2 = "0.0.0.0:50051";
  char* argv[] = {a0.data(), a1.data(), a2.data()};
  bool exit_now = false;
  auto refused = ParseCommandLine(3, argv, &exit_now);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("--allow-insecure-public"));

  std::string a3 = "--allow-insecure-public";
  char* allowed_argv[] = {a0.data(), a1.data(), a2.data(), a3.data()};
  auto allowed = ParseCommandLine(4, allowed_argv, &exit_now);
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  EXPECT_TRUE(allowed->allow_insecure_public);

  std::string a4 = "--tokens-file", a5 = "/etc/vqkv/tokens";
  char* auth_argv[] = {a0.data(), a1.data(), a2.data(), a4.data(), a5.data()};
  EXPECT_TRUE(ParseCommandLine(5, auth_argv, &exit_now).ok());

  ServerConfig y;
  ASSERT_TRUE(ApplyYamlConfig("listen: 0.0.0.0:1\n", "test", &y).ok());
  EXPECT_EQ(y.Validate().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(
      ApplyYamlConfig("allow_insecure_public: true\n", "test", &y).ok());
  EXPECT_TRUE(y.Validate().ok());
}

TEST(ConfigTest, AdmissionLimitsFromFlagsAndYaml) {
  ServerConfig c;
  EXPECT_EQ(c.service.max_stream_blocks, uint64_t{1} << 20);
  EXPECT_EQ(c.service.max_queued_work, 4096u);
  EXPECT_EQ(c.max_concurrent_streams, 100);
  EXPECT_EQ(c.grpc_memory_bytes, uint64_t{2} << 30);
  ASSERT_TRUE(
      ApplyYamlConfig("max_stream_blocks: 5000\nmax_queued_work: 64\n"
                      "max_concurrent_streams: 8\ngrpc_memory_bytes: 512MiB\n"
                      "admin_tenant: ops\n",
                      "test", &c)
          .ok());
  EXPECT_EQ(c.service.max_stream_blocks, 5000u);
  EXPECT_EQ(c.service.max_queued_work, 64u);
  EXPECT_EQ(c.max_concurrent_streams, 8);
  EXPECT_EQ(c.grpc_memory_bytes, uint64_t{512} << 20);
  EXPECT_EQ(c.service.admin_tenant, "ops");
  EXPECT_TRUE(c.Validate().ok());
  c.grpc_memory_bytes = 1 << 20;  // below twice the message limit
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);

  std::string a0 = "vqkv-server", a1 = "--max-queued-work", a2 = "7",
              a3 = "--max-concurrent-streams", a4 = "3",
              a5 = "--max-stream-blocks", a6 = "99", a7 = "--admin-tenant",
              a8 = "root";
  char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), a4.data(),
                  a5.data(), a6.data(), a7.data(), a8.data()};
  bool exit_now = false;
  auto parsed = ParseCommandLine(9, argv, &exit_now);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->service.max_queued_work, 7u);
  EXPECT_EQ(parsed->max_concurrent_streams, 3);
  EXPECT_EQ(parsed->service.max_stream_blocks, 99u);
  EXPECT_EQ(parsed->service.admin_tenant, "root");
}

TEST(ConfigTest, StorageLimitsFromFlagsAndYaml) {
  ServerConfig c;
  EXPECT_EQ(c.store.disk_max_records, 0u);  // a quarter of memory_bytes
  EXPECT_EQ(c.store.max_namespaces_per_tenant, 4096u);
  EXPECT_EQ(c.store.codebook_quota.max_sets, 32u);
  EXPECT_EQ(c.store.codebook_quota.max_bytes, uint64_t{8} << 30);
  const absl::Status applied = ApplyYamlConfig(
      "disk_max_records: 100000\nmax_namespaces_per_tenant: 12\n"
      "codebook_max_sets: 3\ncodebook_max_bytes: 64MiB\n",
      "test", &c);
  ASSERT_TRUE(applied.ok()) << applied;
  EXPECT_EQ(c.store.disk_max_records, 100000u);
  EXPECT_EQ(c.store.max_namespaces_per_tenant, 12u);
  EXPECT_EQ(c.store.codebook_quota.max_sets, 3u);
  EXPECT_EQ(c.store.codebook_quota.max_bytes, uint64_t{64} << 20);
  EXPECT_EQ(ApplyYamlConfig("codebook_max_bytes: lots\n", "test", &c).code(),
            absl::StatusCode::kInvalidArgument);

  std::string a0 = "vqkv-server", a1 = "--disk-max-records", a2 = "5",
              a3 = "--max-namespaces-per-tenant", a4 = "0",
              a5 = "--codebook-max-sets", a6 = "0", a7 = "--codebook-max-bytes",
              a8 = "1MiB";
  char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), a4.data(),
                  a5.data(), a6.data(), a7.data(), a8.data()};
  bool exit_now = false;
  auto parsed = ParseCommandLine(9, argv, &exit_now);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->store.disk_max_records, 5u);
  EXPECT_EQ(parsed->store.max_namespaces_per_tenant, 0u);  // unlimited
  EXPECT_EQ(parsed->store.codebook_quota.max_sets, 0u);
  EXPECT_EQ(parsed->store.codebook_quota.max_bytes, uint64_t{1} << 20);
}

TEST(ConfigTest, TlsSettingsFromFlagsAndYaml) {
  ServerConfig c;
  EXPECT_EQ(c.tls_reload_seconds, 60u);
  EXPECT_TRUE(c.tls_client_ca.empty());
  ASSERT_TRUE(ApplyYamlConfig("tls_cert: /t/tls.crt\ntls_key: /t/tls.key\n"
                              "tls_client_ca: /t/ca.crt\n"
                              "tls_reload_seconds: 300\n",
                              "test", &c)
                  .ok());
  EXPECT_EQ(c.tls_client_ca, "/t/ca.crt");
  EXPECT_EQ(c.tls_reload_seconds, 300u);
  EXPECT_TRUE(c.Validate().ok());
  c.tls_reload_seconds = 0;  // gRPC's file watcher needs an interval
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  c.tls_reload_seconds = 86401;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  c.tls_reload_seconds = 60;
  c.tls_cert.clear();
  c.tls_key.clear();  // client certificates without TLS
  const absl::Status no_tls = c.Validate();
  EXPECT_EQ(no_tls.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_tls.message(), HasSubstr("tls_client_ca"));

  std::string a0 = "vqkv-server", a1 = "--tls-cert", a2 = "c.pem",
              a3 = "--tls-key", a4 = "k.pem", a5 = "--tls-client-ca",
              a6 = "ca.pem", a7 = "--tls-reload-seconds", a8 = "5";
  char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), a4.data(),
                  a5.data(), a6.data(), a7.data(), a8.data()};
  bool exit_now = false;
  auto parsed = ParseCommandLine(9, argv, &exit_now);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->tls_client_ca, "ca.pem");
  EXPECT_EQ(parsed->tls_reload_seconds, 5u);
}

}  // namespace
}  // namespace vqkv::service
