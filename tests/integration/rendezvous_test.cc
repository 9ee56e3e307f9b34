// Rendezvous against a real vqkv-server process: an NCCL id published by one
// client after a delay is awaited by another over its own channel; an await
// that times out; tenants that cannot see each other's entries; and the raw
// RPCs: field validation, overwrite, TTL cap and expiry, the per-tenant
// bound, metrics.
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/grpc/grpc_backend.h"
#include "client/nccl/nccl_rendezvous.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/server_process.h"

namespace vqkv::client {
namespace {

using ::testing::HasSubstr;
using ::vqkv::testing::HttpGet;
using ::vqkv::testing::HttpResult;
using ::vqkv::testing::ServerProcess;
using ::vqkv::testing::TempDir;

std::unique_ptr<Backend> Grpc(const ServerProcess& server,
                              const std::string& token = "") {
  auto b = NewGrpcBackend({.target = server.address(), .auth_token = token});
  EXPECT_TRUE(b.ok()) << b.status();
  return *std::move(b);
}

// A server with its data in `dir` (rendezvous entries never touch it).
std::unique_ptr<ServerProcess> Start(const TempDir& dir,
                                     std::vector<std::string> args) {
  args.insert(args.end(), {"--data-dir", dir.path() + "/data"});
  auto s = ServerProcess::Start(args);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

NcclUniqueIdBytes TestId(uint8_t seed) {
  NcclUniqueIdBytes id;
  for (size_t i = 0; i < id.size(); ++i) {
    id[i] = static_cast<uint8_t>(seed ^ (i * 13));
  }
  return id;
}

// The raw stub, with a token and a deadline.
struct Raw {
  Raw(const ServerProcess& server, std::string token)
      : stub(server.Stub()), token(std::move(token)) {}
  std::unique_ptr<grpc::ClientContext> Ctx() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(30));
    return ctx;
  }
  grpc::Status Put(const std::string& key, const std::string& value,
                   uint32_t ttl_ms, v1::PutRendezvousResponse* resp) const {
    v1::PutRendezvousRequest req;
    req.set_key(key);
    req.set_value(value);
    req.set_ttl_ms(ttl_ms);
    return stub->PutRendezvous(Ctx().get(), req, resp);
  }
  grpc::Status Put(const std::string& key, const std::string& value,
                   uint32_t ttl_ms) const {
    v1::PutRendezvousResponse resp;
    return Put(key, value, ttl_ms, &resp);
  }
  v1::GetRendezvousResponse Get(const std::string& key) const {
    v1::GetRendezvousRequest req;
    req.set_key(key);
    v1::GetRendezvousResponse resp;
    const grpc::Status s = stub->GetRendezvous(Ctx().get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  std::unique_ptr<v1::KVCache::Stub> stub;
  std::string token;
};

TEST(RendezvousServerTest, IdPublishedLaterByOneClientIsAwaitedByAnother) {
  TempDir dir;
  auto server = Start(dir, {"--memory-bytes", "16MiB"});
  ASSERT_NE(server, nullptr);
  // Prefill and decode: separate backends, separate channels.
  std::unique_ptr<Backend> prefill = Grpc(*server);
  std::unique_ptr<Backend> decode = Grpc(*server);
  const NcclUniqueIdBytes id = TestId(0x5a);
  absl::Notification awaiting;
  absl::Status published;
  std::thread publisher([&] {
    awaiting.WaitForNotification();
    absl::SleepFor(absl::Milliseconds(300));
    published = PublishNcclId(prefill.get(), "req-42/tp0", id,
                              absl::Seconds(60), absl::Seconds(10));
  });
  const absl::Time start = absl::Now();
  awaiting.Notify();
  absl::StatusOr<NcclUniqueIdBytes> got =
      AwaitNcclId(decode.get(), "req-42/tp0", absl::Seconds(20));
  const absl::Duration waited = absl::Now() - start;
  publisher.join();
  ASSERT_TRUE(published.ok()) << published;
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, id);
  EXPECT_GE(waited, absl::Milliseconds(290));
  EXPECT_LT(waited, absl::Seconds(10));

  // A later publish on the same channel replaces the id.
  ASSERT_TRUE(
      PublishNcclId(prefill.get(), "req-42/tp0", TestId(1), absl::Seconds(60))
          .ok());
  got = AwaitNcclId(decode.get(), "req-42/tp0", absl::Seconds(5));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, TestId(1));
}

TEST(RendezvousServerTest, AwaitTimesOutWhenNobodyPublishes) {
  TempDir dir;
  auto server = Start(dir, {"--memory-bytes", "16MiB"});
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Backend> decode = Grpc(*server);
  const absl::Time start = absl::Now();
  absl::StatusOr<NcclUniqueIdBytes> got =
      AwaitNcclId(decode.get(), "nobody-home", absl::Milliseconds(400));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded)
      << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("nobody-home"));
  EXPECT_GE(waited, absl::Milliseconds(395));
  EXPECT_LT(waited, absl::Seconds(5));
  // Through the backend, an absent key is kNotFound.
  EXPECT_EQ(
      decode->GetRendezvous("nccl/nobody-home", absl::Now() + absl::Seconds(5))
          .status()
          .code(),
      absl::StatusCode::kNotFound);
}

TEST(RendezvousServerTest, TenantsCannotSeeEachOthersEntries) {
  TempDir dir;
  const std::string tokens = dir.WriteFile(
      "tokens.txt", "alice-token-123 alice\nbob-token-4567 bob\n");
  auto server =
      Start(dir, {"--memory-bytes", "16MiB", "--tokens-file", tokens});
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Backend> alice = Grpc(*server, "alice-token-123");
  std::unique_ptr<Backend> alice2 = Grpc(*server, "alice-token-123");
  std::unique_ptr<Backend> bob = Grpc(*server, "bob-token-4567");
  ASSERT_TRUE(
      PublishNcclId(alice.get(), "shared-name", TestId(9), absl::Seconds(60))
          .ok());

  // Bob sees nothing under the same channel, exactly as for an absent one.
  absl::StatusOr<NcclUniqueIdBytes> bobs =
      AwaitNcclId(bob.get(), "shared-name", absl::Milliseconds(300));
  EXPECT_EQ(bobs.status().code(), absl::StatusCode::kDeadlineExceeded)
      << bobs.status();
  Raw raw_bob(*server, "bob-token-4567");
  const v1::GetRendezvousResponse seen = raw_bob.Get("nccl/shared-name");
  const v1::GetRendezvousResponse absent = raw_bob.Get("nccl/never-put");
  EXPECT_FALSE(seen.found());
  EXPECT_EQ(seen.SerializeAsString(), absent.SerializeAsString());

  // Bob's own entry under the same key leaves Alice's alone.
  ASSERT_TRUE(
      PublishNcclId(bob.get(), "shared-name", TestId(10), absl::Seconds(60))
          .ok());
  absl::StatusOr<NcclUniqueIdBytes> alices =
      AwaitNcclId(alice2.get(), "shared-name", absl::Seconds(5));
  ASSERT_TRUE(alices.ok()) << alices.status();
  EXPECT_EQ(*alices, TestId(9));
  EXPECT_EQ(*AwaitNcclId(bob.get(), "shared-name", absl::Seconds(5)),
            TestId(10));

  // No or an unknown token: UNAUTHENTICATED, and the await gives up at once.
  for (const std::string& token : {std::string(), std::string("nope-nope")}) {
    std::unique_ptr<Backend> anon = Grpc(*server, token);
    EXPECT_EQ(
        PublishNcclId(anon.get(), "x", TestId(1), absl::Seconds(10)).code(),
        absl::StatusCode::kUnauthenticated);
    const absl::Time start = absl::Now();
    EXPECT_EQ(AwaitNcclId(anon.get(), "shared-name", absl::Seconds(20))
                  .status()
                  .code(),
              absl::StatusCode::kUnauthenticated);
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  }
}

TEST(RendezvousServerTest, RawRpcsValidateExpireCapAndBound) {
  TempDir dir;
  auto server = Start(
      dir, {"--memory-bytes", "16MiB", "--metrics-listen", "127.0.0.1:0"});
  ASSERT_NE(server, nullptr);
  Raw c(*server, "");

  // Validation: INVALID_ARGUMENT naming the field; nothing stored.
  struct Bad {
    std::string key, value;
    uint32_t ttl_ms;
    std::string field;
  };
  for (const Bad& b : std::vector<Bad>{
           {"", "v", 1000, "key must be 1..256 bytes, got 0"},
           {std::string(257, 'k'), "v", 1000, "key must be 1..256 bytes"},
           {"k", "", 1000, "value must be 1..4096 bytes, got 0"},
           {"k", std::string(4097, 'v'), 1000, "value must be 1..4096 bytes"},
           {"k", "v", 0, "ttl_ms must be at least 1"}}) {
    const grpc::Status s = c.Put(b.key, b.value, b.ttl_ms);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << b.field;
    EXPECT_THAT(s.error_message(), HasSubstr(b.field));
  }
  EXPECT_FALSE(c.Get("k").found());
  {
    v1::GetRendezvousRequest req;  // empty key
    v1::GetRendezvousResponse resp;
    const grpc::Status s = c.stub->GetRendezvous(c.Ctx().get(), req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("key must be"));
  }

  // Binary values round trip bit-exact; the TTL is capped at 10 minutes.
  std::string value(4096, '\0');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>(i * 7);
  v1::PutRendezvousResponse put;
  ASSERT_TRUE(c.Put("big", value, 4'000'000'000u, &put).ok());
  EXPECT_EQ(put.ttl_ms(), 600000u);
  v1::GetRendezvousResponse got = c.Get("big");
  ASSERT_TRUE(got.found());
  EXPECT_EQ(got.value(), value);
  EXPECT_GT(got.remaining_ttl_ms(), 590000u);
  EXPECT_LE(got.remaining_ttl_ms(), 600000u);

  // Overwrite replaces value and TTL; expiry makes the key absent.
  ASSERT_TRUE(c.Put("k", "first", 60000, &put).ok());
  EXPECT_EQ(put.ttl_ms(), 60000u);
  ASSERT_TRUE(c.Put("k", "second", 300).ok());
  got = c.Get("k");
  ASSERT_TRUE(got.found());
  EXPECT_EQ(got.value(), "second");
  EXPECT_LE(got.remaining_ttl_ms(), 300u);
  EXPECT_GE(got.remaining_ttl_ms(), 1u);
  absl::SleepFor(absl::Milliseconds(500));
  got = c.Get("k");
  EXPECT_FALSE(got.found());
  EXPECT_EQ(got.value(), "");
  EXPECT_EQ(got.remaining_ttl_ms(), 0u);

  // The per-tenant bound (1024 entries, "big" is one of them).
  for (int i = 1; i < 1024; ++i) {
    const grpc::Status s = c.Put(absl::StrCat("fill-", i), "v", 60000);
    ASSERT_TRUE(s.ok()) << i << ": " << s.error_message();
  }
  const grpc::Status full = c.Put("one-too-many", "v", 60000);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << full.error_message();
  EXPECT_TRUE(c.Put("fill-1", "overwrite is fine", 60000).ok());
  EXPECT_EQ(c.Get("fill-1").value(), "overwrite is fine");

  const HttpResult m = HttpGet(server->metrics_port(), "/metrics");
  ASSERT_EQ(m.status, 200);
  EXPECT_THAT(m.body, HasSubstr("vqkv_requests_total{method=\"PutRendezvous\","
                                "code=\"INVALID_ARGUMENT\"} 5\n"));
  EXPECT_THAT(m.body, HasSubstr("vqkv_requests_total{method=\"PutRendezvous\","
                                "code=\"RESOURCE_EXHAUSTED\"} 1\n"));
  EXPECT_THAT(m.body, HasSubstr("vqkv_requests_total{method=\"GetRendezvous\","
                                "code=\"OK\"}"));
  EXPECT_THAT(m.body, HasSubstr("vqkv_request_duration_seconds_count{method="
                                "\"PutRendezvous\"}"));
}

}  // namespace
}  // namespace vqkv::client
